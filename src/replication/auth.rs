//! The cluster secret: a Hello carries an HMAC-SHA256 over who it claims to be and when, so a
//! process without the secret cannot join and feed the cluster bucket states. (It does not hide
//! the traffic: for that, run the peer stream over mTLS.)

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::proto::Hello;

type HmacSha256 = Hmac<Sha256>;

/// A Hello older or newer than this is refused, so a recorded one cannot be replayed later.
pub const MAX_HELLO_SKEW_NS: i64 = 60_000_000_000;

fn mac(secret: &[u8], h: &Hello) -> HmacSha256 {
    let mut m =
        <HmacSha256 as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length");
    for part in [h.cluster_id.as_bytes(), h.node.as_bytes()] {
        m.update(&(part.len() as u64).to_le_bytes());
        m.update(part);
    }
    m.update(&h.incarnation.to_le_bytes());
    m.update(&h.wall_ns.to_le_bytes());
    m
}

pub fn sign(secret: Option<&[u8]>, h: &mut Hello) {
    h.auth = match secret {
        Some(s) => mac(s, h).finalize().into_bytes().to_vec(),
        None => Vec::new(),
    };
}

/// Check a received Hello's signature and freshness against our secret.
pub fn verify(secret: Option<&[u8]>, h: &Hello, now_ns: i64) -> Result<(), String> {
    let Some(s) = secret else {
        return Ok(());
    };
    if h.auth.is_empty() {
        return Err("peer sent no cluster secret signature".into());
    }
    mac(s, h)
        .verify_slice(&h.auth)
        .map_err(|_| "cluster secret signature does not match".to_string())?;
    if (h.wall_ns.saturating_sub(now_ns)).abs() > MAX_HELLO_SKEW_NS {
        return Err(
            "signed Hello is stale (replayed, or the clocks are more than 60 s apart)".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            cluster_id: "c".into(),
            node: "a".into(),
            incarnation: 7,
            wall_ns: 1_000,
            ..Default::default()
        }
    }

    #[test]
    fn a_hello_signed_with_the_secret_verifies() {
        let mut h = hello();
        sign(Some(b"s3cret"), &mut h);
        assert_eq!(verify(Some(b"s3cret"), &h, 1_000), Ok(()));
    }

    #[test]
    fn another_secret_or_no_signature_is_refused() {
        let mut h = hello();
        sign(Some(b"other"), &mut h);
        assert!(verify(Some(b"s3cret"), &h, 1_000).is_err());
        let unsigned = hello();
        assert!(verify(Some(b"s3cret"), &unsigned, 1_000).is_err());
    }

    #[test]
    fn a_tampered_identity_is_refused() {
        let mut h = hello();
        sign(Some(b"s3cret"), &mut h);
        h.node = "mallory".into();
        assert!(verify(Some(b"s3cret"), &h, 1_000).is_err());
    }

    #[test]
    fn a_replayed_hello_is_refused() {
        let mut h = hello();
        sign(Some(b"s3cret"), &mut h);
        assert!(verify(Some(b"s3cret"), &h, 1_000 + 2 * MAX_HELLO_SKEW_NS).is_err());
    }
}
