//! Test fixture `fetcher`: `fetch` makes one GET through
//! `wasi:http/outgoing-handler` (the `wasi` crate's bindings) and reports
//! the host's error code as text; `spin` keeps the guest busy.

use wasi::http::outgoing_handler;
use wasi::http::types::{ErrorCode, Fields, Method, OutgoingRequest, Scheme};
use wasi::io::streams::StreamError;

wit_bindgen::generate!({
    world: "fetcher",
    path: "wit",
});

struct Fetcher;

/// Splits `scheme://authority/path?query`.
fn split(url: &str) -> Result<(Scheme, &str, &str), String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("{url}: no scheme"))?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_string()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok((scheme, authority, path))
}

fn code(e: ErrorCode) -> String {
    format!("{e:?}")
}

fn get(url: &str) -> Result<String, String> {
    let (scheme, authority, path) = split(url)?;
    let req = OutgoingRequest::new(Fields::new());
    req.set_method(&Method::Get).map_err(|()| "method refused".to_string())?;
    req.set_scheme(Some(&scheme)).map_err(|()| "scheme refused".to_string())?;
    req.set_authority(Some(authority)).map_err(|()| "authority refused".to_string())?;
    req.set_path_with_query(Some(path)).map_err(|()| "path refused".to_string())?;
    let pending = outgoing_handler::handle(req, None).map_err(code)?;
    let response = loop {
        if let Some(r) = pending.get() {
            break r.map_err(|()| "response taken twice".to_string())?.map_err(code)?;
        }
        pending.subscribe().block();
    };
    let status = response.status();
    let body = response.consume().map_err(|()| "body taken twice".to_string())?;
    let stream = body.stream().map_err(|()| "stream taken twice".to_string())?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => return Err(format!("reading the body: {}", e.to_debug_string())),
        }
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if status == 200 {
        Ok(text)
    } else {
        Err(format!("status {status}: {text}"))
    }
}

impl Guest for Fetcher {
    fn fetch(url: String) -> Result<String, String> {
        get(&url)
    }

    fn spin(ms: u64) -> u64 {
        let start = std::time::Instant::now();
        let mut rounds = 0u64;
        while start.elapsed().as_millis() < u128::from(ms) {
            rounds = rounds.wrapping_add(1);
        }
        rounds
    }
}

export!(Fetcher);
