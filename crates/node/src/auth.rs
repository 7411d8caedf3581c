//! Bearer-token check. Both sides are hashed before a constant-time
//! comparison, so neither the token's bytes nor its length leak through
//! timing.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub struct Auth {
    /// SHA-256 of the whole expected header value, `Bearer <token>`.
    expected: Option<[u8; 32]>,
}

impl Auth {
    pub fn new(token: Option<&str>) -> Auth {
        Auth {
            expected: token.map(|t| Sha256::digest(format!("Bearer {t}")).into()),
        }
    }

    /// Whether a request with this `Authorization` header value may pass.
    pub fn allows(&self, header: Option<&[u8]>) -> bool {
        let Some(expected) = &self.expected else {
            return true;
        };
        let Some(header) = header else {
            return false;
        };
        let got: [u8; 32] = Sha256::digest(header).into();
        got.ct_eq(expected).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_the_bearer_token() {
        let a = Auth::new(Some("s3cret"));
        assert!(a.allows(Some(b"Bearer s3cret")));
        assert!(!a.allows(Some(b"Bearer s3cre")));
        assert!(!a.allows(Some(b"s3cret")));
        assert!(!a.allows(None));
        assert!(Auth::new(None).allows(None));
    }
}
