//! Model and route recognition for proxied calls: KServe / Triton v2 paths
//! (`/v2/models/{model}[/versions/{v}]/infer`), TF Serving paths
//! (`/v1/models/{model}[/versions/{v}]:predict`), Gemini and Vertex AI paths
//! (`/v1beta/models/{model}:generateContent`, `.../publishers/google/models/{model}:...`),
//! Bedrock runtime paths (`/model/{model}/converse`), Azure OpenAI deployments
//! (`/openai/deployments/{deployment}/...`, the deployment standing for the model unless the
//! body names one), a configured header, a configured path regex with a named group `model`,
//! and the OpenAI-style `model` field of a JSON body (read from a bounded prefix; OpenAI,
//! Anthropic, Ollama, vLLM and TGI all name the model there). Routes are reduced to templates (`/v1/users/123` → `/v1/users/{id}`) and
//! both models and routes are capped in number, with an `other` bucket beyond the cap, so a
//! scanner cannot blow up cardinality.

use std::collections::HashSet;
use std::sync::Mutex;

use regex::Regex;

/// The bucket values beyond the cardinality cap fall into.
pub const OTHER: &str = "other";

/// A route template: segments that are literals or `{name}` placeholders.
#[derive(Debug, Clone)]
pub struct RouteTemplate {
    text: String,
    segments: Vec<Option<String>>,
}

impl RouteTemplate {
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("route template {text:?} must start with `/`"));
        }
        let segments = text
            .split('/')
            .skip(1)
            .map(|s| {
                if s.starts_with('{') && s.ends_with('}') && s.len() > 2 {
                    None
                } else {
                    Some(s.to_string())
                }
            })
            .collect();
        Ok(Self {
            text: text.to_string(),
            segments,
        })
    }

    fn matches(&self, path: &str) -> bool {
        let mut parts = path.split('/').skip(1);
        for segment in &self.segments {
            match (segment, parts.next()) {
                (_, None) => return false,
                (Some(literal), Some(part)) if literal != part => return false,
                _ => {}
            }
        }
        parts.next().is_none()
    }
}

/// A path segment that looks like an identifier rather than a fixed name: numbers, UUIDs,
/// long hex strings.
fn looks_like_id(bytes: &[u8]) -> bool {
    let digits = !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit);
    let uuid = bytes.len() == 36
        && bytes.iter().all(|b| b.is_ascii_hexdigit() || *b == b'-')
        && bytes.iter().filter(|b| **b == b'-').count() == 4;
    let hex = bytes.len() >= 16 && bytes.iter().all(u8::is_ascii_hexdigit);
    digits || uuid || hex
}

/// Remembers up to `limit` distinct values; later new values become [`OTHER`].
pub struct CardinalityCap {
    limit: usize,
    /// foldhash rather than SipHash: the set holds at most `limit` values, so a client choosing
    /// colliding values cannot make it grow, only its own few lookups slower.
    seen: Mutex<HashSet<String, foldhash::fast::RandomState>>,
}

impl CardinalityCap {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            seen: Mutex::new(HashSet::default()),
        }
    }

    pub fn admit(&self, value: String) -> String {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(&value) {
            return value;
        }
        if seen.len() < self.limit {
            seen.insert(value.clone());
            return value;
        }
        OTHER.to_string()
    }
}

/// Recognises models and routes.
pub struct Recognizer {
    pub model_header: Option<String>,
    pub path_regex: Option<Regex>,
    pub templates: Vec<RouteTemplate>,
    pub models: CardinalityCap,
    pub routes: CardinalityCap,
}

/// What the path alone says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PathInfo {
    pub route: String,
    pub model: Option<String>,
    /// A model the request body's `model` field, if any, replaces (an Azure deployment).
    pub fallback_model: Option<String>,
}

impl Recognizer {
    /// Route template and (if the path carries one) model, from the path.
    pub fn from_path(&self, path: &str) -> PathInfo {
        if let Some(info) = kserve(path)
            .or_else(|| gemini(path))
            .or_else(|| tf_serving(path))
            .or_else(|| vertex(path))
            .or_else(|| bedrock(path))
            .or_else(|| azure(path))
        {
            return info;
        }
        let model = self
            .path_regex
            .as_ref()
            .and_then(|r| r.captures(path))
            .and_then(|c| c.name("model").map(|m| m.as_str().to_string()));
        let route = match self.templates.iter().find(|t| t.matches(path)) {
            Some(template) => template.text.clone(),
            // Split as bytes: `/` never occurs inside a multi-byte character.
            None if !path.as_bytes().split(|b| *b == b'/').any(looks_like_id) => path.to_string(),
            None => path
                .split('/')
                .map(|s| {
                    if looks_like_id(s.as_bytes()) {
                        "{id}"
                    } else {
                        s
                    }
                })
                .collect::<Vec<_>>()
                .join("/"),
        };
        PathInfo {
            route,
            model,
            fallback_model: None,
        }
    }

    /// Applies the caps.
    pub fn capped(&self, route: String, model: Option<String>) -> (String, Option<String>) {
        (
            self.routes.admit(route),
            model.map(|m| self.models.admit(m)),
        )
    }
}

/// `/v2/models/{model}[/versions/{v}]/infer` (also `/ready`, metadata).
fn kserve(path: &str) -> Option<PathInfo> {
    let rest = path.strip_prefix("/v2/models/")?;
    let mut parts = rest.split('/');
    let model = parts.next().filter(|m| !m.is_empty())?.to_string();
    let tail: Vec<&str> = parts.collect();
    let route = match tail.as_slice() {
        [] => "/v2/models/{model}".to_string(),
        ["versions", _, rest @ ..] => {
            format!("/v2/models/{{model}}/versions/{{version}}{}", suffix(rest))
        }
        rest => format!("/v2/models/{{model}}{}", suffix(rest)),
    };
    Some(PathInfo {
        route,
        model: Some(model),
        fallback_model: None,
    })
}

/// The Gemini API's methods on a model.
const GEMINI_METHODS: [&str; 5] = [
    "generateContent",
    "streamGenerateContent",
    "countTokens",
    "embedContent",
    "batchEmbedContents",
];

/// `/{v1,v1beta,v1alpha}/models/{model}:{method}` and `.../tunedModels/{model}:{method}`
/// (the Gemini API).
fn gemini(path: &str) -> Option<PathInfo> {
    let rest = path.strip_prefix('/')?;
    let (version, rest) = rest.split_once('/')?;
    if !matches!(version, "v1" | "v1beta" | "v1alpha") {
        return None;
    }
    let (collection, rest) = rest.split_once('/')?;
    if !matches!(collection, "models" | "tunedModels") {
        return None;
    }
    let (model, method) = rest.rsplit_once(':')?;
    if model.is_empty() || model.contains('/') || !GEMINI_METHODS.contains(&method) {
        return None;
    }
    Some(PathInfo {
        route: format!("/{version}/{collection}/{{model}}:{method}"),
        model: Some(model.to_string()),
        fallback_model: None,
    })
}

/// Vertex AI: `/{version}/projects/{p}/locations/{l}/publishers/{publisher}/models/{model}:{method}`.
fn vertex(path: &str) -> Option<PathInfo> {
    let parts: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    match parts.as_slice() {
        [version, "projects", _, "locations", _, "publishers", publisher, "models", model_method]
            if version.starts_with('v') =>
        {
            let (model, method) = model_method.rsplit_once(':')?;
            (!model.is_empty()).then(|| PathInfo {
                route: format!(
                    "/{version}/projects/{{project}}/locations/{{location}}/publishers/{publisher}/models/{{model}}:{method}"
                ),
                model: Some(model.to_string()),
                fallback_model: None,
            })
        }
        [version, "projects", _, "locations", _, "endpoints", endpoint_method]
            if version.starts_with('v') =>
        {
            let (endpoint, method) = endpoint_method.rsplit_once(':')?;
            (!endpoint.is_empty()).then(|| PathInfo {
                route: format!(
                    "/{version}/projects/{{project}}/locations/{{location}}/endpoints/{{endpoint}}:{method}"
                ),
                model: Some(endpoint.to_string()),
                fallback_model: None,
            })
        }
        _ => None,
    }
}

/// Amazon Bedrock's runtime: `/model/{model}/{invoke,converse,converse-stream,...}`, the
/// model id percent-decoded (`...-v1%3A0` is `...-v1:0`).
fn bedrock(path: &str) -> Option<PathInfo> {
    let rest = path.strip_prefix("/model/")?;
    let (model, action) = rest.split_once('/')?;
    if model.is_empty()
        || !matches!(
            action,
            "invoke" | "invoke-with-response-stream" | "converse" | "converse-stream"
        )
    {
        return None;
    }
    Some(PathInfo {
        route: format!("/model/{{model}}/{action}"),
        model: Some(percent_decoded(model)),
        fallback_model: None,
    })
}

/// Azure OpenAI: `/openai/deployments/{deployment}/...`; the deployment stands for the model
/// unless the request body names one.
fn azure(path: &str) -> Option<PathInfo> {
    let rest = path.strip_prefix("/openai/deployments/")?;
    let (deployment, operation) = match rest.split_once('/') {
        Some((deployment, operation)) => (deployment, format!("/{operation}")),
        None => (rest, String::new()),
    };
    if deployment.is_empty() {
        return None;
    }
    Some(PathInfo {
        route: format!("/openai/deployments/{{deployment}}{operation}"),
        model: None,
        fallback_model: Some(percent_decoded(deployment)),
    })
}

/// `%XX` escapes decoded; text that does not decode to UTF-8 is kept as written.
fn percent_decoded(text: &str) -> String {
    if !text.contains('%') {
        return text.to_string();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|b| (*b as char).to_digit(16));
        if bytes[i] == b'%' {
            if let (Some(high), Some(low)) = (hex(i + 1), hex(i + 2)) {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| text.to_string())
}

/// `/v1/models/{model}[/versions/{v}]:predict` (also `:classify`, `:regress`, metadata).
fn tf_serving(path: &str) -> Option<PathInfo> {
    let rest = path.strip_prefix("/v1/models/")?;
    let (head, verb) = match rest.rsplit_once(':') {
        Some((head, verb)) => (head, format!(":{verb}")),
        None => (rest, String::new()),
    };
    let mut parts = head.split('/');
    let model = parts.next().filter(|m| !m.is_empty())?.to_string();
    let route = match parts.collect::<Vec<_>>().as_slice() {
        [] => format!("/v1/models/{{model}}{verb}"),
        ["versions", _] => format!("/v1/models/{{model}}/versions/{{version}}{verb}"),
        ["labels", _] => format!("/v1/models/{{model}}/labels/{{label}}{verb}"),
        other => format!("/v1/models/{{model}}{}{verb}", suffix(other)),
    };
    Some(PathInfo {
        route,
        model: Some(model),
        fallback_model: None,
    })
}

fn suffix(parts: &[&str]) -> String {
    parts.iter().map(|p| format!("/{p}")).collect()
}

/// Finds a top-level `"model": "..."` in a (possibly truncated) JSON object prefix without
/// parsing the whole body: scans string tokens at depth 1.
pub fn model_from_json_prefix(prefix: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(prefix).unwrap_or_else(|e| {
        // A prefix may end inside a multi-byte character.
        std::str::from_utf8(&prefix[..e.valid_up_to()]).unwrap_or_default()
    });
    let bytes = text.as_bytes();
    let mut depth = 0i32;
    let mut i = 0;
    let mut expecting_key = false;
    let mut last_key: Option<&str> = None;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => {
                depth += 1;
                expecting_key = bytes[i] == b'{';
                i += 1;
            }
            b'}' | b']' => {
                depth -= 1;
                i += 1;
            }
            b',' => {
                expecting_key = true;
                i += 1;
            }
            b':' => {
                expecting_key = false;
                i += 1;
            }
            b'"' => {
                let start = i + 1;
                let mut end = start;
                let mut escaped = false;
                while end < bytes.len() {
                    match bytes[end] {
                        b'\\' if !escaped => escaped = true,
                        b'"' if !escaped => break,
                        _ => escaped = false,
                    }
                    end += 1;
                }
                if end >= bytes.len() {
                    return None; // truncated inside a string
                }
                let token = &text[start..end];
                if depth == 1 {
                    if expecting_key {
                        last_key = Some(token);
                    } else if last_key == Some("model") {
                        // Only a value with escapes (or control characters, which JSON
                        // refuses) needs the JSON parser.
                        if !token.bytes().any(|b| b == b'\\' || b < 0x20) {
                            return Some(token.to_string());
                        }
                        return serde_json::from_str::<String>(&text[start - 1..=end]).ok();
                    }
                }
                i = end + 1;
            }
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recognizer() -> Recognizer {
        Recognizer {
            model_header: Some("x-model-name".into()),
            path_regex: Some(Regex::new(r"^/custom/(?P<model>[a-z0-9-]+)/run$").unwrap()),
            templates: vec![RouteTemplate::parse("/v1/users/{user}/items").unwrap()],
            models: CardinalityCap::new(2),
            routes: CardinalityCap::new(100),
        }
    }

    #[test]
    fn kserve_and_tf_serving_paths_give_model_and_template() {
        let r = recognizer();
        assert_eq!(
            r.from_path("/v2/models/resnet-50/infer"),
            PathInfo {
                route: "/v2/models/{model}/infer".into(),
                model: Some("resnet-50".into()),
                fallback_model: None,
            }
        );
        assert_eq!(
            r.from_path("/v2/models/bert/versions/3/infer").route,
            "/v2/models/{model}/versions/{version}/infer"
        );
        let tf = r.from_path("/v1/models/half_plus_two/versions/2:predict");
        assert_eq!(tf.route, "/v1/models/{model}/versions/{version}:predict");
        assert_eq!(tf.model.as_deref(), Some("half_plus_two"));
        assert_eq!(
            r.from_path("/v1/models/mnist:classify").route,
            "/v1/models/{model}:classify"
        );
    }

    #[test]
    fn templates_regex_and_id_like_segments() {
        let r = recognizer();
        assert_eq!(
            r.from_path("/v1/users/123/items").route,
            "/v1/users/{user}/items"
        );
        assert_eq!(
            r.from_path("/custom/llama-3/run").model.as_deref(),
            Some("llama-3")
        );
        assert_eq!(
            r.from_path("/v1/orders/981/lines/550e8400-e29b-41d4-a716-446655440000")
                .route,
            "/v1/orders/{id}/lines/{id}"
        );
        assert_eq!(
            r.from_path("/v1/chat/completions").route,
            "/v1/chat/completions"
        );
    }

    #[test]
    fn caps_send_new_values_to_other() {
        let r = recognizer();
        assert_eq!(
            r.capped("/a".into(), Some("m1".into())).1.as_deref(),
            Some("m1")
        );
        assert_eq!(
            r.capped("/a".into(), Some("m2".into())).1.as_deref(),
            Some("m2")
        );
        assert_eq!(
            r.capped("/a".into(), Some("m3".into())).1.as_deref(),
            Some(OTHER)
        );
        assert_eq!(
            r.capped("/a".into(), Some("m1".into())).1.as_deref(),
            Some("m1")
        );
    }

    #[test]
    fn model_is_found_in_a_json_prefix_at_the_top_level_only() {
        assert_eq!(
            model_from_json_prefix(br#"{"model": "gpt-4o", "stream": true}"#).as_deref(),
            Some("gpt-4o")
        );
        assert_eq!(
            model_from_json_prefix(br#"{"messages": [{"role": "user", "content": "model: x", "model": "nested"}], "model": "llama"}"#).as_deref(),
            Some("llama")
        );
        assert_eq!(
            model_from_json_prefix(br#"{"input": "a \"model\": \"no\"", "model":"m\u00e9"}"#)
                .as_deref(),
            Some("mé")
        );
        assert_eq!(
            model_from_json_prefix(br#"{"messages": [1, 2, 3], "mod"#),
            None
        );
        assert_eq!(model_from_json_prefix(b"{\"model\": \"a\nb\"}"), None);
        assert_eq!(model_from_json_prefix(b"not json"), None);
    }

    #[test]
    fn provider_paths_give_their_model_and_route() {
        let r = recognizer();
        let gemini = r.from_path("/v1beta/models/gemini-2.0-flash:streamGenerateContent");
        assert_eq!(gemini.route, "/v1beta/models/{model}:streamGenerateContent");
        assert_eq!(gemini.model.as_deref(), Some("gemini-2.0-flash"));
        assert_eq!(
            r.from_path("/v1/models/gemini-pro:generateContent").route,
            "/v1/models/{model}:generateContent"
        );
        let vertex = r.from_path(
            "/v1/projects/my-proj/locations/us-central1/publishers/google/models/gemini-1.5-pro:generateContent",
        );
        assert_eq!(
            vertex.route,
            "/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent"
        );
        assert_eq!(vertex.model.as_deref(), Some("gemini-1.5-pro"));
        let bedrock = r.from_path("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse");
        assert_eq!(bedrock.route, "/model/{model}/converse");
        assert_eq!(
            bedrock.model.as_deref(),
            Some("anthropic.claude-3-5-sonnet-20240620-v1:0")
        );
        let azure = r.from_path("/openai/deployments/prod-gpt4o/chat/completions");
        assert_eq!(
            azure.route,
            "/openai/deployments/{deployment}/chat/completions"
        );
        assert_eq!(azure.model, None);
        assert_eq!(azure.fallback_model.as_deref(), Some("prod-gpt4o"));
        // OpenAI, Anthropic and Ollama paths keep their route; the body names the model.
        for path in [
            "/v1/responses",
            "/v1/messages",
            "/api/chat",
            "/api/generate",
            "/v1/embeddings",
        ] {
            let info = r.from_path(path);
            assert_eq!((info.route.as_str(), info.model), (path, None));
        }
        assert_eq!(percent_decoded("a%3Ab%zz%4"), "a:b%zz%4");
    }
}
