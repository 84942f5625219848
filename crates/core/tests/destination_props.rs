//! Property tests of the destination rules: the URL parser never panics on any input, and a
//! URL accepted under a base really lies under it, judged here by plain string checks that
//! do not share code with the parser.

use ferry_core::{Destination, Method, UrlBase};
use proptest::prelude::*;

const BASE: &str = "https://up.example/u/alice";

/// Independent judgement: scheme https, host up.example (port 443 if any), path `/u/alice`
/// or below it on a segment boundary, and no way to climb out with dot segments.
fn really_inside(url: &str) -> bool {
    // Scheme and host are case-insensitive; the path is not.
    let Some(rest) = url
        .get(..8)
        .filter(|s| s.eq_ignore_ascii_case("https://"))
        .map(|_| &url[8..])
    else {
        return false;
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, rest) = rest.split_at(authority_end);
    let authority = authority.to_ascii_lowercase();
    if (authority != "up.example" && authority != "up.example:443") || url.contains('#') {
        return false;
    }
    let path = rest.split('?').next().unwrap_or("");
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return false;
    }
    let under = path == "/u/alice" || path.starts_with("/u/alice/");
    let climbs = path.split('/').any(|seg| {
        matches!(
            seg.to_ascii_lowercase().replace("%2e", ".").as_str(),
            "." | ".."
        )
    });
    under && !climbs
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parser_never_panics(input in any::<String>()) {
        let base = [UrlBase::parse(BASE).unwrap()];
        let _ = Destination::new(Method::Put, input.clone()).validate(&base);
        let _ = UrlBase::parse(&input);
    }

    #[test]
    fn accepted_urls_lie_inside_the_base(
        url in "(https|HTTPS|http|ftp)://(up\\.example|UP\\.Example|evil\\.example|up\\.example\\.evil|up\\.example@evil)(:443|:8443|:|)(/u/alice|/u/alicex|/u|/U/alice|)(/|/\\.\\.|/%2[eE]%2e|%2[fF]\\.\\.|/%5c|/\\.|/x|\\?q=/\\.\\.|#f)*"
    ) {
        let base = [UrlBase::parse(BASE).unwrap()];
        let accepted = Destination::new(Method::Put, url.clone()).validate(&base).is_ok();
        prop_assert_eq!(accepted, really_inside(&url), "url {}", url);
    }

    #[test]
    fn header_values_with_line_breaks_are_refused(
        name in "[A-Za-z][A-Za-z0-9-]{0,10}",
        value in "[ -~]{0,10}[\r\n\0][ -~]{0,10}",
    ) {
        let base = [UrlBase::parse(BASE).unwrap()];
        let d = Destination::new(Method::Post, format!("{BASE}/x")).header(name, value);
        prop_assert!(d.validate(&base).is_err());
    }
}
