//! Random setup tokens and user ids.

pub(super) fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| format!("no randomness: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A random (version 4) UUID, the browser client's `user_id`.
pub(super) fn uuid_v4() -> String {
    // Without OS randomness the ObjectId still identifies the user; the UUID
    // then merely loses its randomness, so do not fail the request over it.
    crate::util::uuid_v4(&mut |b| {
        let _ = getrandom::fill(b);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!("89ab".contains(&u[19..20]));
        assert_ne!(u, uuid_v4());
    }
}
