//! The short one-time pairing code a person reads off the receiving device and types on the
//! sending one: `7-K4M2-9QXT`, 43 bits from the OS's randomness, in Crockford's base32 (no I, L,
//! O, U), typed in any case with or without dashes and spaces. SPAKE2 makes it a strong key; an
//! attacker gets one guess per code because the receiver accepts one pairing attempt.

use crate::error::{MigrateError, Result};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const LEAD: &[u8; 8] = b"23456789";
/// Characters of a code once normalized: one lead digit and eight base32 symbols.
const LEN: usize = 9;

/// A pairing code (normalized: uppercase, no separators).
#[derive(Clone, PartialEq, Eq)]
pub struct Code(String);

impl std::fmt::Debug for Code {
    // A code is a secret while it is valid: keep it out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Code(***)")
    }
}

impl Code {
    /// A fresh code from the OS's randomness.
    pub fn generate() -> Result<Code> {
        let mut bytes = [0u8; 6];
        getrandom::fill(&mut bytes)
            .map_err(|e| MigrateError::Io(std::io::Error::other(e.to_string())))?;
        let mut s = String::with_capacity(LEN);
        s.push(LEAD[(bytes[0] & 7) as usize] as char);
        let bits = u64::from_be_bytes([0, 0, 0, bytes[1], bytes[2], bytes[3], bytes[4], bytes[5]]);
        for i in (0..8).rev() {
            s.push(ALPHABET[((bits >> (i * 5)) & 31) as usize] as char);
        }
        Ok(Code(s))
    }

    /// Reads what a person typed: case-insensitive, dashes and spaces ignored, the usual
    /// look-alikes (O, I, L) read as the digits they resemble. A malformed code is refused here,
    /// before it could spend the receiver's one attempt.
    pub fn parse(typed: &str) -> Result<Code> {
        let mut s = String::with_capacity(LEN);
        for c in typed.chars() {
            let c = match c.to_ascii_uppercase() {
                '-' | ' ' | '\t' => continue,
                'O' => '0',
                'I' | 'L' => '1',
                c => c,
            };
            if !c.is_ascii() || !ALPHABET.contains(&(c as u8)) {
                return Err(MigrateError::WrongCode);
            }
            s.push(c);
        }
        if s.len() != LEN || !LEAD.contains(&s.as_bytes()[0]) {
            return Err(MigrateError::WrongCode);
        }
        Ok(Code(s))
    }

    /// As shown to a person: `7-K4M2-9QXT`.
    pub fn display(&self) -> String {
        format!("{}-{}-{}", &self.0[..1], &self.0[1..5], &self.0[5..])
    }

    /// The SPAKE2 password: the normalized code.
    pub(crate) fn password(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_codes_parse_back_in_any_spelling() {
        for _ in 0..200 {
            let c = Code::generate().unwrap();
            let shown = c.display();
            assert_eq!(shown.len(), 11);
            assert_eq!(Code::parse(&shown).unwrap(), c);
            let sloppy = shown.to_lowercase().replace('-', " ");
            assert_eq!(Code::parse(&sloppy).unwrap(), c);
        }
    }

    #[test]
    fn malformed_codes_are_refused() {
        for bad in [
            "",
            "7-K4M2-9QX",
            "7-K4M2-9QXTT",
            "1-K4M2-9QXT",
            "7-K4M2-9QXU",
            "7-K4M2-9QX!",
        ] {
            assert!(
                matches!(Code::parse(bad), Err(MigrateError::WrongCode)),
                "{bad}"
            );
        }
        assert_eq!(
            Code::parse("7-k4m2-9qxo").unwrap(),
            Code::parse("7K4M29QX0").unwrap()
        );
    }
}
