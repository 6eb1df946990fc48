//! `aqua-ipfs` guest: stores the node's local and external IPFS API
//! multiaddrs in its data directory after checking their syntax.

mod multiaddr;

use sysdeploy::host::node::{log, Level};

wit_bindgen::generate!({
    world: "sysdeploy:aqua-ipfs/aqua-ipfs",
    path: ["../../../wit/host.wit", "../wit"],
    generate_all,
});

/// The service's private data directory, the only one the host preopens.
const DATA: &str = "/data";

struct AquaIpfs;

fn store(which: &str, addr: &str) -> Result<(), String> {
    multiaddr::validate(addr).map_err(|e| format!("{which} API multiaddr {addr:?} is invalid: {e}"))?;
    let path = format!("{DATA}/{which}_api_multiaddr");
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, addr).map_err(|e| format!("cannot write {tmp}: {e}"))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("cannot rename {tmp} to {path}: {e}"))?;
    log(Level::Info, &format!("{which} IPFS API multiaddr set to {addr}"));
    Ok(())
}

fn load(which: &str) -> Result<String, String> {
    let path = format!("{DATA}/{which}_api_multiaddr");
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("the {which} API multiaddr is not set; call set-{which}-api-multiaddr first"))
        }
        Err(e) => Err(format!("cannot read {path}: {e}")),
    }
}

impl Guest for AquaIpfs {
    fn set_local_api_multiaddr(addr: String) -> Result<(), String> {
        store("local", &addr)
    }
    fn set_external_api_multiaddr(addr: String) -> Result<(), String> {
        store("external", &addr)
    }
    fn get_local_api_multiaddr() -> Result<String, String> {
        load("local")
    }
    fn get_external_api_multiaddr() -> Result<String, String> {
        load("external")
    }
}

export!(AquaIpfs);
