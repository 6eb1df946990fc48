//! The `sysdeploy` binary: a thin shell over [`sysdeploy::cli`].
fn main() -> std::process::ExitCode {
    sysdeploy::cli::main()
}
