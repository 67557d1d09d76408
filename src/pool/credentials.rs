//! The gate of a pool: a client gets a pooled connection only when its credentials are the
//! ones that logged that connection in. The pool keeps a keyed digest (HMAC-SHA256 under a
//! secret made when the pool is) of what logged each connection in, never the credentials,
//! and compares in constant time.

use ring::hmac;

/// What a client logs in with: `public` may be logged and compared plainly (the virtual host,
/// say); `secret` is everything else the broker sees at login (mechanism, response,
/// capabilities), compared only as a digest.
pub struct Credentials {
    pub public: String,
    pub secret: Vec<u8>,
}

impl Credentials {
    /// A secret made of `parts`, each prefixed with its length so that no two lists of parts
    /// make the same bytes.
    pub fn secret_of<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
        let mut secret = Vec::with_capacity(128);
        for part in parts {
            secret.extend_from_slice(&(part.len() as u32).to_be_bytes());
            secret.extend_from_slice(part);
        }
        secret
    }
}

/// What a pool keeps of the credentials that logged a connection in.
#[derive(Clone)]
pub struct Fingerprint {
    pub public: String,
    tag: hmac::Tag,
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fingerprint")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Fingerprint {
    /// Whether both were made of the same credentials by the same gate. The digests are
    /// compared plainly: they tell nothing of the secret without the gate's key.
    pub fn same(&self, other: &Fingerprint) -> bool {
        self.public == other.public && self.tag.as_ref() == other.tag.as_ref()
    }
}

/// A pool's secret: random, in memory only, so that a digest outlives nothing it was made in.
pub struct Gate {
    key: hmac::Key,
}

impl Default for Gate {
    fn default() -> Gate {
        let secret: [u8; 32] = rand::random();
        Gate {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
        }
    }
}

impl Gate {
    pub fn fingerprint(&self, credentials: &Credentials) -> Fingerprint {
        Fingerprint {
            public: credentials.public.clone(),
            tag: hmac::sign(&self.key, &credentials.secret),
        }
    }

    /// Whether `credentials` are those `fingerprint` was made of; constant time in the secret.
    pub fn admits(&self, credentials: &Credentials, fingerprint: &Fingerprint) -> bool {
        credentials.public == fingerprint.public
            && self.admits_secret(&credentials.secret, fingerprint)
    }

    /// Whether `secret` is the secret part of what `fingerprint` was made of, whatever its
    /// public part; constant time.
    pub fn admits_secret(&self, secret: &[u8], fingerprint: &Fingerprint) -> bool {
        hmac::verify(&self.key, secret, fingerprint.tag.as_ref()).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(public: &str, secret: &[u8]) -> Credentials {
        Credentials {
            public: public.into(),
            secret: secret.to_vec(),
        }
    }

    #[test]
    fn admits_only_the_same_credentials() {
        let gate = Gate::default();
        let print = gate.fingerprint(&credentials("/", b"\0guest\0guest"));
        assert!(gate.admits(&credentials("/", b"\0guest\0guest"), &print));
        assert!(!gate.admits(&credentials("/", b"\0guest\0wrong"), &print));
        assert!(!gate.admits(&credentials("/other", b"\0guest\0guest"), &print));
        assert!(!gate.admits(&credentials("/", b""), &print));
        assert!(gate.admits_secret(b"\0guest\0guest", &print));
        assert!(!gate.admits_secret(b"\0guest\0wrong", &print));
    }

    #[test]
    fn another_gate_admits_nothing_of_this_one() {
        let print = Gate::default().fingerprint(&credentials("/", b"x"));
        assert!(!Gate::default().admits(&credentials("/", b"x"), &print));
    }

    #[test]
    fn debug_shows_no_digest() {
        let print = Gate::default().fingerprint(&credentials("/", b"secret"));
        assert_eq!(format!("{print:?}"), "Fingerprint { public: \"/\", .. }");
    }
}
