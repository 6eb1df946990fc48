//! The seam between the config loader and the distros: each package declares
//! the keys of its `[system_services.<package>]` section, and the loader
//! validates the effective values against them.
//!
//! The distro layer builds these from `distro.toml` `[config.*]` tables; the
//! config layer never needs to know where they came from.

use serde::{Deserialize, Serialize};

/// The type a package config key must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    String,
    Integer,
    Float,
    Boolean,
    /// A list of strings (env form: comma-separated).
    #[serde(rename = "string-list")]
    StringList,
    /// A string holding an `http` or `https` URL with a host.
    Url,
    /// A string holding a 20-byte hex address: `0x` and 40 hex digits.
    #[serde(rename = "hex-address")]
    HexAddress,
    /// A string holding a hex number (a block number): `0x` and 1 to 16 hex digits.
    #[serde(rename = "hex-number")]
    HexNumber,
}

impl ValueType {
    pub fn describe(self) -> &'static str {
        match self {
            ValueType::String => "a string",
            ValueType::Integer => "an integer",
            ValueType::Float => "a number",
            ValueType::Boolean => "a boolean (true or false)",
            ValueType::StringList => "a list of strings",
            ValueType::Url => "an http(s) URL such as \"http://127.0.0.1:8545\"",
            ValueType::HexAddress => "a 20-byte hex address: 0x followed by 40 hex digits",
            ValueType::HexNumber => "a hex number such as \"0x1a2b\": 0x followed by 1 to 16 hex digits",
        }
    }
}

/// One key of a package's config section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeySpec {
    /// Key name inside the package section (`external_api_multiaddr`).
    pub name: String,
    pub ty: ValueType,
    /// Compiled-in default; `None` with `required = false` means "unset".
    pub default: Option<serde_json::Value>,
    /// A value must come from some layer when there is no default.
    pub required: bool,
    /// Never printed, logged or shown in plans; only "secret changed".
    pub secret: bool,
    /// One line for `sysdeploy config` and docs.
    pub doc: String,
    /// Older env var names still honoured below the `SYSDEPLOY_` names, with a
    /// deprecation warning (`FLUENCE_ENV_AQUA_IPFS_EXTERNAL_API_MULTIADDR`).
    pub legacy_env: Vec<String>,
}

/// All keys of one package's section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackageSchema {
    /// Package name as in `enable` (`aqua-ipfs`).
    pub package: String,
    pub keys: Vec<KeySpec>,
}

impl PackageSchema {
    /// Section name under `[system_services]` (`aqua_ipfs`).
    pub fn section(&self) -> String {
        self.package.replace('-', "_")
    }
    pub fn key(&self, name: &str) -> Option<&KeySpec> {
        self.keys.iter().find(|k| k.name == name)
    }
}
