//! Validated identifiers shared by every layer: peer ids, content hashes,
//! blueprint and service ids, aliases and package names.
//!
//! Every id is a newtype whose constructor validates, so a value of the type is
//! proof that the string is well-formed (parse, don't validate).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a string is not a valid name (alias or package name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("is empty")]
    Empty,
    #[error("is {0} characters long; at most {MAX_NAME_LEN} are allowed")]
    TooLong(usize),
    #[error(
        "contains {0:?}; only lowercase ASCII letters, digits and single '-' between them are allowed (kebab-case, starting with a letter)"
    )]
    BadChar(char),
    #[error("must start with a lowercase letter")]
    BadStart,
    #[error("must not end with '-' or contain '--'")]
    BadDash,
}

/// Longest alias or package name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// Checks the kebab-case rule shared by aliases and package names:
/// `[a-z][a-z0-9]*(-[a-z0-9]+)*`, at most [`MAX_NAME_LEN`] bytes. This rules
/// out path separators, `..`, whitespace and non-ASCII by construction.
pub fn validate_name(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(s.chars().count()));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
        return Err(NameError::BadChar(c));
    }
    if !s.as_bytes()[0].is_ascii_lowercase() {
        return Err(NameError::BadStart);
    }
    if s.ends_with('-') || s.contains("--") {
        return Err(NameError::BadDash);
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                validate_name(&s)?;
                Ok(Self(s))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
    };
}

name_type!(
    /// A unique human name that resolves to one service or spell (`registry`).
    Alias
);
name_type!(
    /// A distro package name (`aqua-ipfs`); its config section is the name with
    /// `-` turned into `_` (`[system_services.aqua_ipfs]`).
    PackageName
);

impl PackageName {
    /// The key of this package's section under `[system_services]`.
    pub fn config_key(&self) -> String {
        self.0.replace('-', "_")
    }
}

/// Why a string is not a valid 32-byte hex digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected 64 lowercase hex characters (a blake3 digest), got {0:?}")]
pub struct DigestError(pub String);

macro_rules! digest_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(pub [u8; 32]);

        impl $name {
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            pub fn from_hex(s: &str) -> Result<Self, DigestError> {
                let mut out = [0u8; 32];
                if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err(DigestError(s.to_string()));
                }
                hex::decode_to_slice(s, &mut out).map_err(|_| DigestError(s.to_string()))?;
                Ok(Self(out))
            }
            /// First 12 hex characters, for humans.
            pub fn short(&self) -> String {
                self.to_hex()[..12].to_string()
            }
        }
        impl TryFrom<String> for $name {
            type Error = DigestError;
            fn try_from(s: String) -> Result<Self, DigestError> {
                Self::from_hex(&s)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.to_hex()
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }
    };
}

digest_type!(
    /// blake3 of a component's bytes.
    ComponentHash
);
digest_type!(
    /// blake3 of a blueprint's canonical encoding.
    BlueprintId
);

impl ComponentHash {
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }
}

/// A service instance id: 32 random hex characters, never reused.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceId(String);

impl ServiceId {
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).expect("the OS random source failed");
        Self(hex::encode(b))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for ServiceId {
    type Error = DigestError;
    fn try_from(s: String) -> Result<Self, DigestError> {
        if s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(Self(s))
        } else {
            Err(DigestError(s))
        }
    }
}
impl From<ServiceId> for String {
    fn from(v: ServiceId) -> String {
        v.0
    }
}
impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceId({})", self.0)
    }
}

/// A peer id in the libp2p text form (`12D3KooW...`): base58btc of the
/// identity multihash of the protobuf-encoded ed25519 public key.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PeerId(String);

impl PeerId {
    pub fn from_ed25519_public(pk: &[u8; 32]) -> Self {
        // protobuf PublicKey { KeyType Type = 1 (Ed25519 = 1); bytes Data = 2 }
        let mut proto = vec![0x08, 0x01, 0x12, 0x20];
        proto.extend_from_slice(pk);
        // identity multihash: code 0x00, length
        let mut mh = vec![0x00, proto.len() as u8];
        mh.extend_from_slice(&proto);
        Self(bs58::encode(mh).into_string())
    }
    /// Accepts any non-empty base58 string; used for ids of other owners read
    /// back from the store.
    pub fn parse(s: &str) -> Option<Self> {
        (!s.is_empty() && bs58::decode(s).into_vec().is_ok()).then(|| Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["registry", "aqua-ipfs", "a1", "trust-graph-2"] {
            assert!(Alias::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Registry", "a/b", "..", "a..b", "-a", "a-", "a--b", "1a", "é", "a b", &"a".repeat(65)] {
            assert!(Alias::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn digest_round_trip() {
        let h = ComponentHash::of(b"abc");
        assert_eq!(ComponentHash::from_hex(&h.to_hex()).unwrap(), h);
        assert!(ComponentHash::from_hex("xyz").is_err());
        assert!(ComponentHash::from_hex(&h.to_hex().to_uppercase()).is_err());
    }

    #[test]
    fn peer_id_has_libp2p_shape() {
        let p = PeerId::from_ed25519_public(&[7u8; 32]);
        assert!(p.as_str().starts_with("12D3KooW"), "{p}");
    }
}
