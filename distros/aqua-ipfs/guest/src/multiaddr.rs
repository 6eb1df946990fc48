//! Syntax check of textual multiaddrs as an IPFS API address is written:
//! `/ip4/127.0.0.1/tcp/5001`, `/ip6/::1/tcp/5001`, `/dns4/ipfs.local/tcp/5001`,
//! optionally followed by `/http`, `/https`, `/tls`, `/ws`, `/wss` or
//! `/p2p/<peer id>`.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Checks `addr` and returns a human-readable reason when it is not valid.
pub fn validate(addr: &str) -> Result<(), String> {
    let Some(rest) = addr.strip_prefix('/') else {
        return Err("a multiaddr starts with '/', e.g. /ip4/127.0.0.1/tcp/5001".into());
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let mut i = 0;
    let take = |i: &mut usize, proto: &str| -> Result<String, String> {
        let v = parts.get(*i).copied().unwrap_or("");
        if v.is_empty() {
            return Err(format!("/{proto} needs a value"));
        }
        *i += 1;
        Ok(v.to_string())
    };

    // Network layer: exactly one host component first.
    let proto = parts[i];
    i += 1;
    match proto {
        "ip4" => {
            let v = take(&mut i, proto)?;
            v.parse::<Ipv4Addr>().map_err(|_| format!("{v:?} is not an IPv4 address"))?;
        }
        "ip6" => {
            let v = take(&mut i, proto)?;
            v.parse::<Ipv6Addr>().map_err(|_| format!("{v:?} is not an IPv6 address"))?;
        }
        "dns" | "dns4" | "dns6" | "dnsaddr" => {
            let v = take(&mut i, proto)?;
            validate_host(&v)?;
        }
        "" => return Err("empty protocol name".into()),
        other => {
            return Err(format!(
                "unsupported first protocol /{other}; expected /ip4, /ip6, /dns, /dns4, /dns6 or /dnsaddr"
            ))
        }
    }

    // Transport: the IPFS API is reached over TCP.
    match parts.get(i).copied() {
        Some("tcp") => {
            i += 1;
            let v = take(&mut i, "tcp")?;
            match v.parse::<u16>() {
                Ok(0) | Err(_) => return Err(format!("{v:?} is not a TCP port (1-65535)")),
                Ok(_) => {}
            }
        }
        Some(other) if proto != "dnsaddr" => {
            return Err(format!("expected /tcp/<port> after the host, found /{other}"))
        }
        None if proto != "dnsaddr" => return Err("missing /tcp/<port> after the host".into()),
        _ => {}
    }

    // Optional application-layer suffixes.
    while i < parts.len() {
        let p = parts[i];
        i += 1;
        match p {
            "http" | "https" | "tls" | "ws" | "wss" => {}
            "p2p" | "ipfs" => {
                let v = take(&mut i, p)?;
                if !v.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Err(format!("{v:?} is not a peer id"));
                }
            }
            "" => return Err("empty protocol name (a '//' or a trailing '/')".into()),
            other => return Err(format!("unsupported protocol /{other} after the transport")),
        }
    }
    Ok(())
}

fn validate_host(h: &str) -> Result<(), String> {
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if h.len() > 253 || !h.split('.').all(ok_label) {
        return Err(format!("{h:?} is not a DNS host name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn accepts_common_forms() {
        for ok in [
            "/ip4/127.0.0.1/tcp/5001",
            "/ip6/::1/tcp/5001",
            "/dns4/ipfs.example.com/tcp/443/https",
            "/dns/ipfs/tcp/5001/http",
            "/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWDc3ij",
            "/dnsaddr/bootstrap.libp2p.io",
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_forms() {
        for bad in [
            "",
            "ip4/127.0.0.1/tcp/5001",
            "/ip4/256.0.0.1/tcp/5001",
            "/ip4/127.0.0.1",
            "/ip4/127.0.0.1/tcp/0",
            "/ip4/127.0.0.1/tcp/65536",
            "/ip4/127.0.0.1/udp/5001",
            "/ip6/nothex/tcp/1",
            "/dns4/bad_host/tcp/1",
            "/ip4/127.0.0.1/tcp/5001/",
            "/foo/bar",
        ] {
            assert!(validate(bad).is_err(), "{bad:?} accepted");
        }
    }
}
