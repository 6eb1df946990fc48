//! Outbound HTTP: `wasi:http/outgoing-handler` (wasmtime-wasi-http) for every
//! guest, behind its service's allow-list (`allowed_outbound_hosts` in
//! `distro.toml`, resolved into `ServiceLimits::allowed_outbound_hosts`).
//!
//! Every component may import `wasi:http` and links (componentize-js output
//! does by default); what a request may reach is decided per request here. A
//! request to an origin outside the list never leaves the node: the guest gets
//! the WASI error code `HTTP-request-denied` and the node logs service and
//! origin (`scheme://host:port`, never the path or query, which may carry
//! tokens). An allowed request's connect, first-byte and between-bytes
//! timeouts are cut to what is left of the call's TTL, so a server that never
//! answers ends the request inside the call with a timeout error code (and the
//! runtime's outer timeout still ends the call if anything else hangs).

use crate::distro::manifest::AllowedHost;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// The per-instance outbound policy: who is asking, what they may reach,
/// until when.
pub(crate) struct Outbound {
    /// Service id, for the log.
    service: String,
    /// The alias (or id) the current call came in through, for the log.
    target: String,
    allowed: Arc<[AllowedHost]>,
    /// End of the current call's TTL.
    deadline: Option<Instant>,
}

impl Outbound {
    /// A policy that denies everything (until [`Outbound::allow`]).
    pub(crate) fn deny_all(service: &str) -> Self {
        Outbound { service: service.to_string(), target: service.to_string(), allowed: Arc::from(Vec::new()), deadline: None }
    }

    /// Allows the origins of `hosts` (canonical `scheme://host:port`, as
    /// stored in the blueprint; an entry that no longer parses grants nothing).
    pub(crate) fn allow(&mut self, hosts: &[String]) {
        let parsed: Vec<AllowedHost> = hosts
            .iter()
            .filter_map(|h| match AllowedHost::parse(h, false) {
                Ok(a) => Some(a),
                Err(reason) => {
                    tracing::warn!(service = %self.service, entry = %h, "ignoring an allowed outbound host the runtime cannot read: {reason}");
                    None
                }
            })
            .collect();
        self.allowed = Arc::from(parsed);
    }

    /// Starts a call: requests made from now on count against `ttl`.
    pub(crate) fn arm(&mut self, target: &str, ttl: Duration) {
        target.clone_into(&mut self.target);
        self.deadline = Instant::now().checked_add(ttl);
    }

    /// `Err(origin)` when the request's origin is not allowed.
    fn check(&self, uri: &http::Uri) -> Result<(), String> {
        let scheme = uri.scheme_str().unwrap_or("").to_ascii_lowercase();
        let host = uri.host().unwrap_or("");
        let port = uri.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
        if self.allowed.iter().any(|a| a.allows(&scheme, host, port)) {
            Ok(())
        } else {
            Err(format!("{scheme}://{}:{port}", crate::runtime::escape_guest_text(host, 256)))
        }
    }

    /// The request's timeouts, none longer than what is left of the call.
    fn clamp(&self, options: Option<RequestOptions>) -> Option<RequestOptions> {
        let Some(deadline) = self.deadline else { return options };
        let left = deadline.saturating_duration_since(Instant::now());
        let cut = |t: Option<Duration>| Some(t.map_or(left, |t| t.min(left)));
        let o = options.unwrap_or_default();
        Some(RequestOptions {
            connect_timeout: cut(o.connect_timeout),
            first_byte_timeout: cut(o.first_byte_timeout),
            between_bytes_timeout: cut(o.between_bytes_timeout),
        })
    }
}

type Pending = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
type Sent = Box<dyn Future<Output = Result<(http::Response<WasiBody>, Pending), HttpError>> + Send>;

impl WasiHttpHooks for Outbound {
    fn send_request(&mut self, request: http::Request<WasiBody>, options: Option<RequestOptions>, fut: Pending) -> Sent {
        if let Err(origin) = self.check(request.uri()) {
            tracing::warn!(
                service = %self.service,
                alias = %self.target,
                host = %origin,
                "outbound HTTP request denied: {origin} is not in the service's allowed_outbound_hosts"
            );
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        // wasmtime-wasi-http's own client (hyper, rustls with webpki roots).
        wasmtime_wasi_http::default_hooks().send_request(request, self.clamp(options), fut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(hosts: &[&str]) -> Outbound {
        let mut o = Outbound::deny_all("s");
        o.allow(&hosts.iter().map(|h| AllowedHost::parse(h, false).unwrap().to_string()).collect::<Vec<_>>());
        o
    }

    fn allowed(o: &Outbound, url: &str) -> bool {
        o.check(&url.parse().unwrap()).is_ok()
    }

    #[test]
    fn scheme_host_and_port_must_all_match() {
        let o = policy(&["http://127.0.0.1:8080", "https://*.example.com", "*://any.org:*"]);
        assert!(allowed(&o, "http://127.0.0.1:8080/x?y"));
        assert!(!allowed(&o, "https://127.0.0.1:8080/"), "scheme");
        assert!(!allowed(&o, "http://127.0.0.1:8081/"), "port");
        assert!(!allowed(&o, "http://localhost:8080/"), "host");
        assert!(allowed(&o, "https://rpc.example.com/"));
        assert!(allowed(&o, "https://RPC.Example.com:443/"));
        assert!(!allowed(&o, "https://example.com/"), "*.domain is not the domain itself");
        assert!(!allowed(&o, "https://evil-example.com/"));
        assert!(!allowed(&o, "http://rpc.example.com/"), "https only");
        assert!(allowed(&o, "http://any.org:1/") && allowed(&o, "https://any.org/"));
        assert!(!allowed(&Outbound::deny_all("s"), "http://127.0.0.1/"), "no list: nothing");
    }

    #[test]
    fn entries_parse_to_a_canonical_origin() {
        let canon = |t: &str, origin_only: bool| AllowedHost::parse(t, origin_only).map(|a| a.to_string());
        assert_eq!(canon("HTTPS://RPC.Example.COM", false).unwrap(), "https://rpc.example.com:443");
        assert_eq!(canon("http://127.0.0.1", false).unwrap(), "http://127.0.0.1:80");
        assert_eq!(canon("http://[::1]:8545/", false).unwrap(), "http://[::1]:8545");
        assert_eq!(canon("*://*:*", false).unwrap(), "*://*:*");
        assert_eq!(canon("https://node.example.com/v1/abc?key=k", true).unwrap(), "https://node.example.com:443");
        assert!(canon("https://node.example.com/v1", false).is_err(), "a literal entry has no path");
        assert!(canon("https://u:p@node.example.com", true).unwrap_err().contains("credentials"));
        let o = policy(&["http://[::1]:8545"]);
        assert!(allowed(&o, "http://[::1]:8545/") && !allowed(&o, "http://[::2]:8545/"));
    }

    #[test]
    fn the_denied_origin_names_no_path_or_query() {
        let o = policy(&["http://a.b"]);
        let origin = o.check(&"https://user:pw@c.d:99/secret?token=x".parse().unwrap()).unwrap_err();
        assert_eq!(origin, "https://c.d:99");
    }

    #[test]
    fn timeouts_are_cut_to_the_call_ttl() {
        let mut o = policy(&["http://a.b"]);
        assert_eq!(o.clamp(None), None, "outside a call nothing is cut");
        o.arm("alias", Duration::from_millis(500));
        let c = o.clamp(Some(RequestOptions { connect_timeout: Some(Duration::from_millis(10)), ..Default::default() })).unwrap();
        assert_eq!(c.connect_timeout, Some(Duration::from_millis(10)), "a shorter timeout stays");
        assert!(c.first_byte_timeout.unwrap() <= Duration::from_millis(500));
        assert!(c.between_bytes_timeout.unwrap() <= Duration::from_millis(500));
    }
}
