//! Password rules (SPEC §2): 8–1024 characters, obviously weak ones refused with a reason.

/// A few hundred of the most common passwords would be better; these are the ones that make up
/// most of every breached-password list's head.
const COMMON: &[&str] = &[
    "password",
    "password1",
    "password12",
    "password123",
    "passw0rd",
    "p@ssw0rd",
    "12345678",
    "123456789",
    "1234567890",
    "qwertyuiop",
    "qwerty123",
    "qwerty12",
    "1q2w3e4r",
    "1qaz2wsx",
    "iloveyou",
    "sunshine",
    "princess",
    "football",
    "baseball",
    "welcome1",
    "welcome123",
    "letmein1",
    "admin123",
    "administrator",
    "changeme",
    "trustno1",
    "superman",
    "starwars",
    "whatever",
    "dragon123",
    "monkey123",
    "abc12345",
    "abcdefgh",
    "11111111",
    "00000000",
    "88888888",
    "87654321",
    "asdfghjk",
    "zaq12wsx",
    "secret123",
    "master123",
    "football1",
    "shadow123",
    "michael1",
    "jennifer",
    "computer",
    "internet",
    "gatehouse",
    "gatehouse1",
];

/// `Err(reason)` when the password must be refused.
pub fn check_password(password: &str, email: Option<&str>) -> Result<(), &'static str> {
    let chars = password.chars().count();
    if chars < 8 {
        return Err("must be at least 8 characters");
    }
    if chars > 1024 {
        return Err("must be at most 1024 characters");
    }
    let lower = password.to_lowercase();
    if COMMON.contains(&lower.as_str()) {
        return Err("is one of the most common passwords");
    }
    let first = lower.chars().next().unwrap_or_default();
    if lower.chars().all(|c| c == first) {
        return Err("repeats a single character");
    }
    if is_sequence(&lower) {
        return Err("is a simple sequence");
    }
    if let Some(email) = email {
        let local = email.split('@').next().unwrap_or_default().to_lowercase();
        if lower == email.to_lowercase() || (local.len() >= 4 && lower.contains(&local)) {
            return Err("must not contain your email address");
        }
    }
    Ok(())
}

fn is_sequence(s: &str) -> bool {
    let b = s.as_bytes();
    b.windows(2).all(|w| w[1] == w[0].wrapping_add(1))
        || b.windows(2).all(|w| w[1] == w[0].wrapping_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_passwords_are_refused_with_a_reason() {
        assert!(check_password("short", None).is_err());
        assert!(check_password(&"a".repeat(1025), None).is_err());
        assert!(check_password("Password123", None).is_err());
        assert!(check_password("aaaaaaaaaa", None).is_err());
        assert!(check_password("abcdefghij", None).is_err());
        assert!(check_password("987654321", None).is_err());
        assert!(check_password("alice.smith-2024", Some("alice.smith@example.com")).is_err());
    }

    #[test]
    fn reasonable_passwords_pass() {
        assert!(check_password("correct horse battery staple", None).is_ok());
        assert!(check_password("Tr0ub4dor&3x", Some("bob@example.com")).is_ok());
    }
}
