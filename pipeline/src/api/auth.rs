//! API keys: stored as SHA-256 digests and compared in constant time against every entry (no
//! early exit), taken from `Authorization: Bearer <key>`, `X-API-Key: <key>`, or for the
//! WebSocket feed (which browsers cannot give headers) an `api_key` query parameter. Each
//! route needs a scope; a missing or unknown key is 401, a key without the scope 403, both
//! with a JSON body.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::settings::{KeySpec, Scope};

struct StoredKey {
    name: String,
    digest: [u8; 32],
    scopes: Vec<Scope>,
}

/// The configured keys; empty means the API is open.
#[derive(Default)]
pub struct KeyStore {
    keys: Vec<StoredKey>,
}

/// Who called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub admin: bool,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl KeyStore {
    /// Checks the specs; the error names the key entry at fault.
    pub fn new(specs: &[KeySpec]) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (index, spec) in specs.iter().enumerate() {
            let at = format!("api.keys[{index}] ({})", spec.name);
            let digest = match (&spec.key, &spec.sha256) {
                (Some(key), None) if key.len() >= 16 => digest(key),
                (Some(_), None) => {
                    return Err(format!(
                        "{at}: `key` is shorter than 16 characters; use a random key, e.g. `openssl rand -hex 32`"
                    ))
                }
                (None, Some(hex_digest)) => {
                    let bytes = hex::decode(hex_digest.trim()).map_err(|_| {
                        format!("{at}: `sha256` must be 64 hex digits (sha256sum of the key)")
                    })?;
                    bytes.try_into().map_err(|_| {
                        format!("{at}: `sha256` must be 64 hex digits (sha256sum of the key)")
                    })?
                }
                _ => return Err(format!("{at}: give exactly one of `key` and `sha256`")),
            };
            if spec.scopes.is_empty() {
                return Err(format!(
                    "{at}: `scopes` is empty; use [\"read\"] or [\"read\", \"admin\"]"
                ));
            }
            keys.push(StoredKey {
                name: spec.name.clone(),
                digest,
                scopes: spec.scopes.clone(),
            });
        }
        Ok(Self { keys })
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The caller a presented key belongs to; every stored digest is compared.
    pub fn identify(&self, presented: &str) -> Option<Caller> {
        let presented = digest(presented);
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.digest.ct_eq(&presented)) {
                found = Some(Caller {
                    name: key.name.clone(),
                    admin: key.scopes.contains(&Scope::Admin),
                });
            }
        }
        found
    }

    /// Checks a request for `scope`.
    pub fn authorize(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        scope: Scope,
    ) -> Result<Caller, ApiError> {
        if self.is_open() {
            return Ok(Caller {
                name: "anonymous".into(),
                admin: true,
            });
        }
        let presented = presented_key(headers, query).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
            )
        })?;
        let caller = self.identify(&presented).ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown API key")
        })?;
        if scope == Scope::Admin && !caller.admin {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("the key `{}` lacks the `admin` scope", caller.name),
            ));
        }
        Ok(caller)
    }
}

fn presented_key(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(token) = value.strip_prefix("Bearer ") {
            return Some(token.trim().to_string());
        }
    }
    if let Some(value) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(value.trim().to_string());
    }
    query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(name, _)| name == "api_key")
            .map(|(_, value)| value.into_owned())
    })
}

/// Middleware state: the keys and the scope a group of routes needs.
#[derive(Clone)]
pub struct Guard {
    pub keys: std::sync::Arc<KeyStore>,
    pub scope: Scope,
}

/// Rejects requests without a key for the guard's scope.
pub async fn require(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let query = request.uri().query().map(str::to_string);
    match guard
        .keys
        .authorize(request.headers(), query.as_deref(), guard.scope)
    {
        Ok(_) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> KeyStore {
        KeyStore::new(&[
            KeySpec {
                name: "grafana".into(),
                key: Some("read-key-0123456789".into()),
                sha256: None,
                scopes: vec![Scope::Read],
            },
            KeySpec {
                name: "ops".into(),
                key: None,
                sha256: Some(hex::encode(digest("admin-key-0123456789"))),
                scopes: vec![Scope::Read, Scope::Admin],
            },
        ])
        .expect("valid keys")
    }

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
        headers
    }

    #[test]
    fn keys_map_to_callers_and_scopes() {
        let store = store();
        let read = headers("authorization", "Bearer read-key-0123456789");
        assert_eq!(
            store.authorize(&read, None, Scope::Read).map(|c| c.name),
            Ok("grafana".to_string())
        );
        let denied = store.authorize(&read, None, Scope::Admin).expect_err("403");
        assert_eq!(denied.status, StatusCode::FORBIDDEN);
        let admin = headers("x-api-key", "admin-key-0123456789");
        assert!(store.authorize(&admin, None, Scope::Admin).is_ok());
        let by_query = store.authorize(
            &HeaderMap::new(),
            Some("model=a&api_key=read-key-0123456789"),
            Scope::Read,
        );
        assert!(by_query.is_ok());
        let missing = store
            .authorize(&HeaderMap::new(), None, Scope::Read)
            .expect_err("401");
        assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
        let wrong = store
            .authorize(&headers("x-api-key", "nope"), None, Scope::Read)
            .expect_err("401");
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn bad_key_specs_are_named() {
        let short = KeySpec {
            name: "x".into(),
            key: Some("short".into()),
            sha256: None,
            scopes: vec![Scope::Read],
        };
        assert!(KeyStore::new(&[short])
            .err()
            .is_some_and(|e| e.contains("api.keys[0] (x)")));
        let both = KeySpec {
            name: "y".into(),
            key: Some("0123456789abcdef0".into()),
            sha256: Some("00".into()),
            scopes: vec![Scope::Read],
        };
        assert!(KeyStore::new(&[both])
            .err()
            .is_some_and(|e| e.contains("exactly one")));
    }
}
