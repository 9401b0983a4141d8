//! The direct HTTP/1.1 path's message heads: what a parsed request or response head says about
//! its body and connection, whether a request is of the common shape the direct path serves
//! (anything else is left to hyper), and the heads it writes — the upstream request with
//! hop-by-hop headers removed (RFC 9110 §7.6.1) and the forwarding headers added, and the
//! client's response.

use httparse::Header;

/// Header lines a message head may have; more and the request is left to hyper.
pub const MAX_HEADERS: usize = 100;

/// How a message's body is delimited (RFC 9112 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection (responses only).
    UntilClose,
}

/// What the direct path needs to know about a request it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestFacts {
    pub framing: Framing,
    /// The client asked to close the connection after this call.
    pub close: bool,
    pub is_head: bool,
    /// The method is idempotent (RFC 9110 §9.2.2): sending it twice does what once does.
    pub idempotent: bool,
}

/// `Some` for a request of the shape the direct path serves: HTTP/1.1, an origin-form target,
/// a body delimited by one valid `Content-Length` or by `Transfer-Encoding: chunked` alone, no
/// protocol upgrade, no `Expect`. `None` leaves the request (and the rest of its connection) to
/// hyper, which answers the unusual and the malformed as it always has.
pub fn request_facts(
    method: &str,
    target: &str,
    version: u8,
    headers: &[Header<'_>],
) -> Option<RequestFacts> {
    if version != 1 || method == "CONNECT" || !target.starts_with('/') || !hyper_reads_as_is(target)
    {
        return None;
    }
    let mut length = None;
    let mut chunked = false;
    let mut close = false;
    for header in headers {
        let name = header.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            if length.is_some() {
                return None;
            }
            length = Some(decimal(header.value)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if chunked || !header.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return None;
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"upgrade") || name.eq_ignore_ascii_case(b"expect") {
            return None;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in tokens(header.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return None;
                }
            }
        }
    }
    let framing = match (length, chunked) {
        (Some(_), true) => return None,
        (None, true) => Framing::Chunked,
        (Some(0) | None, false) => Framing::Empty,
        (Some(length), false) => Framing::Length(length),
    };
    Some(RequestFacts {
        framing,
        close,
        is_head: method == "HEAD",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        ),
    })
}

/// Bytes of a target that every URI parser reads as they are.
const PLAIN_TARGET: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
                    | b'?'
                    | b'%'
            );
        byte += 1;
    }
    table
};

/// Whether hyper reads `target` as the same origin-form target, so both paths forward what
/// the client sent: the common target is checked byte by byte; an unusual one (a fragment,
/// characters hyper's URI parser refuses, a length past its limit) is left to hyper, which
/// answers it as it always has (found by the `request-head` fuzz target).
fn hyper_reads_as_is(target: &str) -> bool {
    const HYPER_MAX_TARGET: usize = u16::MAX as usize - 1;
    if target.len() > HYPER_MAX_TARGET {
        return false;
    }
    if target.bytes().all(|b| PLAIN_TARGET[b as usize]) {
        return true;
    }
    !target.contains('#') && hyper::http::uri::PathAndQuery::try_from(target).is_ok()
}

/// What the direct path needs to know about an upstream response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseFacts {
    pub framing: Framing,
    /// The upstream closes the connection after this response.
    pub upstream_closes: bool,
}

/// Reads a response head's framing, or says why the response cannot be forwarded.
pub fn response_facts(
    status: u16,
    version: u8,
    headers: &[Header<'_>],
    request_is_head: bool,
) -> Result<ResponseFacts, &'static str> {
    let mut length: Option<u64> = None;
    let mut transfer_coding: Option<bool> = None;
    let mut upstream_closes = version == 0;
    for header in headers {
        let name = header.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let value = decimal(header.value).ok_or("invalid Content-Length")?;
            if length.is_some_and(|previous| previous != value) {
                return Err("conflicting Content-Length values");
            }
            length = Some(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only the last coding decides; any but chunked cannot be forwarded unchanged.
            let last = tokens(header.value).last().unwrap_or_default();
            transfer_coding = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection")
            && tokens(header.value).any(|t| t.eq_ignore_ascii_case(b"close"))
        {
            upstream_closes = true;
        }
    }
    let bodiless = request_is_head || status < 200 || status == 204 || status == 304;
    let framing = if bodiless {
        Framing::Empty
    } else {
        match (transfer_coding, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => return Err("a transfer coding other than chunked"),
            (None, Some(0)) => Framing::Empty,
            (None, Some(length)) => Framing::Length(length),
            (None, None) => Framing::UntilClose,
        }
    };
    Ok(ResponseFacts {
        framing,
        upstream_closes: upstream_closes || framing == Framing::UntilClose,
    })
}

/// The parts of the upstream request that are not the client's.
pub struct UpstreamHead<'a> {
    /// The upstream URL's path, prefixed to the client's target.
    pub base_path: &'a str,
    /// The `Host` to send (the upstream's, or the client's when kept); none when absent.
    pub host: Option<&'a [u8]>,
    /// The client's address as an `X-Forwarded-For` element.
    pub forwarded_for: &'a [u8],
    /// The request id header and its generated value, when the request has none.
    pub request_id: Option<(&'a str, &'a str)>,
}

/// Writes the request head sent upstream into `out`.
pub fn write_upstream_request(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    headers: &[Header<'_>],
    framing: Framing,
    head: &UpstreamHead<'_>,
) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.base_path.as_bytes());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = head.host {
        line(out, b"host", host);
    }
    let named = connection_named(headers);
    let mut forwarded_for: Option<&[u8]> = None;
    let mut client_host: Option<&[u8]> = None;
    let (mut has_proto, mut has_forwarded_host) = (false, false);
    for header in headers {
        let name = header.name.as_bytes();
        if is_hop_by_hop(name) || named.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"host") {
            client_host.get_or_insert(header.value);
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            // The chain so far (its first field line), with this client appended below.
            forwarded_for.get_or_insert(header.value);
            continue;
        }
        has_proto |= name.eq_ignore_ascii_case(b"x-forwarded-proto");
        has_forwarded_host |= name.eq_ignore_ascii_case(b"x-forwarded-host");
        line(out, name, header.value);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(chain) = forwarded_for.filter(|chain| is_visible_ascii(chain)) {
        out.extend_from_slice(chain);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(head.forwarded_for);
    out.extend_from_slice(b"\r\n");
    if !has_proto {
        out.extend_from_slice(b"x-forwarded-proto: http\r\n");
    }
    if let (false, Some(host)) = (has_forwarded_host, client_host) {
        line(out, b"x-forwarded-host", host);
    }
    if let Some((name, value)) = head.request_id {
        line(out, name.as_bytes(), value.as_bytes());
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the response head sent to the client into `out`: the upstream's status and headers
/// without its hop-by-hop ones, the framing the body is forwarded with, `Connection: close`
/// when the client connection closes after it, and `extra` (the overhead header) when given.
pub fn write_client_response(
    out: &mut Vec<u8>,
    status: u16,
    reason: &str,
    headers: &[Header<'_>],
    framing: Framing,
    close: bool,
    extra: Option<(&str, &str)>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&status_digits(status));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let named = connection_named(headers);
    for header in headers {
        let name = header.name.as_bytes();
        if is_hop_by_hop(name)
            || named.iter().any(|n| n.eq_ignore_ascii_case(name))
            // A chunked body's length is its framing's business (RFC 9112 §6.3).
            || (framing == Framing::Chunked && name.eq_ignore_ascii_case(b"content-length"))
        {
            continue;
        }
        line(out, name, header.value);
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if let Some((name, value)) = extra {
        line(out, name.as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// A header value as text, as `HeaderValue::to_str` reads it: visible ASCII (and tabs) only.
fn header_text(value: &[u8]) -> Option<&str> {
    if is_visible_ascii(value) {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// The value of the first `name` header that reads as text.
pub fn find_header<'h>(headers: &[Header<'h>], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case(name))
        .and_then(|header| header_text(header.value))
}

fn is_visible_ascii(value: &[u8]) -> bool {
    value
        .iter()
        .all(|byte| *byte == b'\t' || (0x20..0x7f).contains(byte))
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn status_digits(status: u16) -> [u8; 3] {
    let status = status.min(999);
    [
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]
}

/// A `Content-Length` value: digits only, within u64.
fn decimal(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 {
        return None;
    }
    // 19 digits always fit in a u64.
    value.iter().try_fold(0u64, |number, byte| {
        byte.is_ascii_digit()
            .then(|| number * 10 + u64::from(byte - b'0'))
    })
}

/// A `Connection` value that names no header: the usual `keep-alive` or `close` alone.
fn names_no_header(value: &[u8]) -> bool {
    value.eq_ignore_ascii_case(b"keep-alive") || value.eq_ignore_ascii_case(b"close")
}

/// The comma-separated tokens of a list header, trimmed, empty ones skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|byte| *byte == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

/// Header names listed in `Connection` besides `close` and `keep-alive`: hop-by-hop too.
fn connection_named<'h>(headers: &[Header<'h>]) -> Vec<&'h [u8]> {
    let mut named = Vec::new();
    for header in headers {
        if header.name.eq_ignore_ascii_case("connection") && !names_no_header(header.value) {
            named.extend(tokens(header.value).filter(|token| {
                !token.eq_ignore_ascii_case(b"close") && !token.eq_ignore_ascii_case(b"keep-alive")
            }));
        }
    }
    named
}

/// The headers RFC 9110 §7.6.1 names as describing one hop, plus `Proxy-Authorization` (the
/// same list as hyper's path). `Trailer` is not one: it declares the trailer fields that go
/// with the message, which hyper's client sends only when they are declared.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    let is = |hop: &str| name.eq_ignore_ascii_case(hop.as_bytes());
    match name.len() {
        2 => is("te"),
        7 => is("upgrade"),
        10 => is("connection") || is("keep-alive"),
        16 => is("proxy-connection"),
        17 => is("transfer-encoding"),
        19 => is("proxy-authorization"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_request(head: &[u8]) -> (String, String, u8, Vec<(String, Vec<u8>)>) {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        assert!(request.parse(head).unwrap().is_complete());
        let owned = request
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect();
        (
            request.method.unwrap().to_string(),
            request.path.unwrap().to_string(),
            request.version.unwrap(),
            owned,
        )
    }

    fn facts(head: &[u8]) -> Option<RequestFacts> {
        let (method, target, version, owned) = parse_request(head);
        let headers: Vec<Header<'_>> = owned
            .iter()
            .map(|(name, value)| Header { name, value })
            .collect();
        request_facts(&method, &target, version, &headers)
    }

    #[test]
    fn common_requests_are_served_and_unusual_ones_left_to_hyper() {
        let served = facts(b"POST /v1/chat HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(
            served,
            Some(RequestFacts {
                framing: Framing::Length(12),
                close: false,
                is_head: false,
                idempotent: false,
            })
        );
        let chunked = facts(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, close\r\n\r\n");
        assert_eq!(
            chunked.map(|f| (f.framing, f.close)),
            Some((Framing::Chunked, true))
        );
        assert_eq!(
            facts(b"HEAD / HTTP/1.1\r\n\r\n").map(|f| (f.framing, f.is_head)),
            Some((Framing::Empty, true))
        );
        for unusual in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"GET http://a/ HTTP/1.1\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        ] {
            assert_eq!(facts(unusual), None, "{}", String::from_utf8_lossy(unusual));
        }
    }

    #[test]
    fn the_upstream_request_drops_hop_by_hop_headers_and_adds_forwarding_ones() {
        let (method, target, _, owned) = parse_request(
            b"POST /v1/chat?x=1 HTTP/1.1\r\nHost: api.example\r\nConnection: keep-alive, X-Secret-Hop\r\n\
              Keep-Alive: timeout=5\r\nX-Secret-Hop: 1\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\n\
              Authorization: Bearer k\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n\r\n",
        );
        let headers: Vec<Header<'_>> = owned
            .iter()
            .map(|(name, value)| Header { name, value })
            .collect();
        let mut out = Vec::new();
        write_upstream_request(
            &mut out,
            &method,
            &target,
            &headers,
            Framing::Chunked,
            &UpstreamHead {
                base_path: "/api",
                host: Some(b"127.0.0.1:8000"),
                forwarded_for: b"127.0.0.9",
                request_id: Some(("x-request-id", "r-1")),
            },
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /api/v1/chat?x=1 HTTP/1.1\r\nhost: 127.0.0.1:8000\r\nAuthorization: Bearer k\r\n\
             x-forwarded-for: 10.0.0.1, 127.0.0.9\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: api.example\r\nx-request-id: r-1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn responses_are_framed_as_rfc_9112_says() {
        let header = |name: &'static str, value: &'static str| Header {
            name,
            value: value.as_bytes(),
        };
        let framing = |status, headers: &[Header<'_>], head| {
            response_facts(status, 1, headers, head).map(|f| (f.framing, f.upstream_closes))
        };
        assert_eq!(
            framing(200, &[header("Content-Length", "5")], false),
            Ok((Framing::Length(5), false))
        );
        assert_eq!(
            framing(200, &[header("Content-Length", "5")], true),
            Ok((Framing::Empty, false))
        );
        assert_eq!(framing(204, &[], false), Ok((Framing::Empty, false)));
        assert_eq!(
            framing(
                200,
                &[
                    header("Transfer-Encoding", "chunked"),
                    header("Content-Length", "5")
                ],
                false
            ),
            Ok((Framing::Chunked, false))
        );
        assert_eq!(framing(200, &[], false), Ok((Framing::UntilClose, true)));
        assert_eq!(
            framing(
                200,
                &[header("Connection", "close"), header("Content-Length", "1")],
                false
            ),
            Ok((Framing::Length(1), true))
        );
        assert!(framing(200, &[header("Transfer-Encoding", "gzip")], false).is_err());
        assert!(framing(
            200,
            &[header("Content-Length", "1"), header("Content-Length", "2")],
            false
        )
        .is_err());
        assert_eq!(
            response_facts(200, 0, &[header("Content-Length", "1")], false)
                .map(|f| f.upstream_closes),
            Ok(true)
        );
    }

    #[test]
    fn the_client_response_carries_the_forwarding_framing() {
        let headers = [
            Header {
                name: "Content-Type",
                value: b"text/event-stream",
            },
            Header {
                name: "Transfer-Encoding",
                value: b"chunked",
            },
            Header {
                name: "Connection",
                value: b"keep-alive",
            },
        ];
        let mut out = Vec::new();
        write_client_response(
            &mut out,
            200,
            "OK",
            &headers,
            Framing::Chunked,
            true,
            Some(("x-proxy-overhead-ms", "0.012")),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\ntransfer-encoding: chunked\r\n\
             connection: close\r\nx-proxy-overhead-ms: 0.012\r\n\r\n"
        );
    }

    #[test]
    fn hop_by_hop_names_match_the_hyper_paths_list() {
        for name in &crate::proxy::server::HOP_BY_HOP {
            assert!(is_hop_by_hop(name.as_str().as_bytes()), "{name}");
            assert!(
                is_hop_by_hop(name.as_str().to_uppercase().as_bytes()),
                "{name}"
            );
        }
        assert!(!is_hop_by_hop(b"x-te"));
        // It declares the message's trailer fields, end to end.
        assert!(!is_hop_by_hop(b"trailer"));
        assert!(!is_hop_by_hop(b"content-type"));
    }
}
