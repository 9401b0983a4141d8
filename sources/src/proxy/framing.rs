//! Request framing checks the hyper path makes before anything is forwarded: a request whose
//! body length an upstream could read differently from the proxy is refused with a 400, since
//! that disagreement is what request smuggling is made of (RFC 9112 §6.1 and §6.3). hyper
//! itself refuses duplicate or malformed Content-Length values and spaces before a colon; what
//! it lets through and an upstream may misread is a Transfer-Encoding whose last coding is not
//! `chunked`, `chunked` applied twice, and Transfer-Encoding on an HTTP/1.0 request.

use hyper::header::TRANSFER_ENCODING;
use hyper::{HeaderMap, Version};

/// Why the request's framing is refused, or `None` when it is sound.
pub fn transfer_coding_problem(version: Version, headers: &HeaderMap) -> Option<&'static str> {
    // No Transfer-Encoding: Content-Length (checked by hyper) or no body frames the request.
    headers.get(TRANSFER_ENCODING)?;
    let mut codings = Vec::new();
    for value in headers.get_all(TRANSFER_ENCODING) {
        let Ok(text) = value.to_str() else {
            return Some("the request's Transfer-Encoding is not text");
        };
        codings.extend(
            text.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_ascii_lowercase),
        );
    }
    if version < Version::HTTP_11 {
        return Some("an HTTP/1.0 request cannot use Transfer-Encoding");
    }
    match codings.iter().rposition(|c| c == "chunked") {
        Some(last) if last + 1 == codings.len() => {
            if codings[..last].iter().any(|c| c == "chunked") {
                Some("the request's Transfer-Encoding applies chunked twice")
            } else {
                None
            }
        }
        _ => Some(
            "the request's Transfer-Encoding does not end in chunked, so its length is unknown",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(TRANSFER_ENCODING, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn only_a_final_single_chunked_on_http_1_1_passes() {
        let v11 = Version::HTTP_11;
        assert_eq!(transfer_coding_problem(v11, &HeaderMap::new()), None);
        assert_eq!(transfer_coding_problem(v11, &headers(&["chunked"])), None);
        assert_eq!(
            transfer_coding_problem(v11, &headers(&["gzip, Chunked"])),
            None
        );
        assert_eq!(
            transfer_coding_problem(v11, &headers(&["gzip", "chunked"])),
            None
        );
        for refused in [
            &["chunked", "cow"][..],
            &["xchunked"],
            &["chunked, identity"],
            &["chunked, chunked"],
            &["chunked", "chunked"],
            &[""],
        ] {
            assert!(
                transfer_coding_problem(v11, &headers(refused)).is_some(),
                "{refused:?}"
            );
        }
        assert!(transfer_coding_problem(Version::HTTP_10, &headers(&["chunked"])).is_some());
    }
}
