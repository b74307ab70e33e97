//! Relaxed alignment of two domains: the same organizational domain, found
//! with the Public Suffix List (the `psl` crate's built-in copy), as DMARC
//! defines it (RFC 7489 §3.2, §3.1.1 relaxed mode).

/// A domain as compared here: A-labels (RFC 5890 §2.3.2.1), lower-case,
/// without the trailing dot. `None` if it is empty or not a domain name
/// (IDNA conversion failed, an address literal, characters a host name
/// cannot have).
pub fn normalize(domain: &str) -> Option<String> {
    let domain = domain.trim();
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_empty() || domain.starts_with('[') {
        return None;
    }
    let ascii = if domain.is_ascii() {
        domain.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(domain).ok()?
    };
    let plausible = ascii.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    plausible.then_some(ascii)
}

/// The organizational domain of a normalized domain (RFC 7489 §3.2: the
/// public suffix and one more label). `None` when the domain is itself a
/// public suffix (`co.uk`) or has no label before one.
pub fn organizational(domain: &str) -> Option<&str> {
    psl::domain_str(domain)
}

/// Whether `a` and `b` are aligned in relaxed mode (RFC 7489 §3.1.1): the
/// same organizational domain. A domain that is itself a public suffix has
/// none; it is aligned only with itself (strict mode), never with another
/// name under that suffix.
pub fn aligned(a: &str, b: &str) -> bool {
    let (Some(a), Some(b)) = (normalize(a), normalize(b)) else {
        return false;
    };
    if a == b {
        return true;
    }
    match (organizational(&a), organizational(&b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains_share_the_organizational_domain_of_the_public_suffix_list() {
        // co.uk is a public suffix on the PSL (publicsuffix.org, ICANN section).
        assert_eq!(organizational("mail.example.co.uk"), Some("example.co.uk"));
        assert!(aligned("mail.example.co.uk", "example.co.uk"));
        assert!(aligned("a.b.example.org", "EXAMPLE.org."));
        assert!(!aligned("example.co.uk", "other.co.uk"));
        assert!(!aligned("example.org", "example.net"));
    }

    #[test]
    fn a_public_suffix_is_aligned_only_with_itself() {
        assert_eq!(organizational("co.uk"), None);
        assert!(aligned("co.uk", "co.uk"));
        assert!(!aligned("co.uk", "example.co.uk"));
    }

    #[test]
    fn unusable_names_are_never_aligned() {
        assert!(!aligned("", ""));
        assert!(!aligned("[192.0.2.1]", "[192.0.2.1]"));
        assert!(!aligned("exa mple.org", "exa mple.org"));
        assert!(!aligned("example..org", "example.org"));
    }

    #[test]
    fn u_labels_are_compared_as_a_labels() {
        // IDNA (RFC 5891): the A-label of bücher is xn--bcher-kva.
        assert!(aligned("mail.bücher.example", "xn--bcher-kva.example"));
    }
}
