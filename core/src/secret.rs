//! Keeping secrets out of messages: a URL's password is masked before the URL is logged or
//! put into an error.

/// `url` with the password of its user information replaced by `***`
/// (`redis://user:pw@host:6379/0` → `redis://user:***@host:6379/0`; a user information
/// without `:`, which Redis reads as a password, is masked whole).
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    let masked = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_string(),
    };
    format!("{}{masked}{}", &url[..scheme_end], &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_masked_and_the_rest_kept() {
        assert_eq!(redact_url("redis://u:s3cret@h:6379/0"), "redis://u:***@h:6379/0");
        assert_eq!(redact_url("redis://:s3cret@h"), "redis://:***@h");
        assert_eq!(redact_url("rediss://s3cret@h/1?x=a@b"), "rediss://***@h/1?x=a@b");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
