//! Annotation templates: `"p99 of {{model}} is {{value}} ms"`. Placeholders name a label, an
//! input field of the row that changed the alert, or `value`; Prometheus's spellings
//! `{{ $labels.model }}` and `{{ $value }}` work too. Templates are checked against the names
//! available when the config is loaded, so a typo is a config error, not an empty string.

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Name(String),
}

impl Template {
    /// Parses `text`; every placeholder must be one of `known`.
    pub fn parse(text: &str, known: &dyn Fn(&str) -> bool) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| {
                format!(
                    "`{{{{` at byte {} has no closing `}}}}`",
                    text.len() - rest.len() + open
                )
            })?;
            let name = normalise(&after[..close]);
            if name.is_empty() {
                return Err("an empty placeholder `{{}}`".into());
            }
            if !known(&name) {
                return Err(format!("unknown placeholder `{{{{{name}}}}}`"));
            }
            parts.push(Part::Name(name));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Self { parts })
    }

    /// Fills the placeholders from `lookup` (missing values render as empty).
    pub fn render(&self, lookup: &dyn Fn(&str) -> Option<String>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Name(name) => out.push_str(&lookup(name).unwrap_or_default()),
            }
        }
        out
    }
}

/// `{{ $labels.model }}` → `model`, `{{ $value }}` → `value`, `{{ model }}` → `model`.
fn normalise(placeholder: &str) -> String {
    let name = placeholder.trim();
    let name = name.strip_prefix("$labels.").unwrap_or(name);
    let name = name.strip_prefix('.').unwrap_or(name);
    name.strip_prefix('$').unwrap_or(name).to_string()
}

/// A number as people read it: integers without decimals, others to 4 significant digits.
pub fn format_number(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    if value.fract() == 0.0 && value.abs() < 1e15 {
        return format!("{value:.0}");
    }
    let magnitude = value.abs().log10().floor() as i32;
    let decimals = (3 - magnitude).clamp(0, 12) as usize;
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(name: &str) -> bool {
        ["model", "value", "endpoint"].contains(&name)
    }

    #[test]
    fn fills_names_in_both_spellings() {
        let template = Template::parse(
            "p99 of {{model}} {{ $labels.endpoint }} is {{ $value }} ms",
            &known,
        )
        .expect("parses");
        let text = template.render(&|name| match name {
            "model" => Some("gpt-4o".into()),
            "endpoint" => Some("/v1/chat".into()),
            "value" => Some(format_number(1234.5678)),
            _ => None,
        });
        assert_eq!(text, "p99 of gpt-4o /v1/chat is 1235 ms");
    }

    #[test]
    fn unknown_and_unclosed_placeholders_are_errors() {
        let unknown = Template::parse("{{modle}}", &known).expect_err("unknown");
        assert!(unknown.contains("modle"), "{unknown}");
        let unclosed = Template::parse("p99 {{value", &known).expect_err("unclosed");
        assert!(unclosed.contains("closing"), "{unclosed}");
        assert_eq!(
            Template::parse("no placeholders", &known)
                .expect("plain")
                .render(&|_| None),
            "no placeholders"
        );
    }

    #[test]
    fn numbers_read_naturally() {
        assert_eq!(format_number(1200.0), "1200");
        assert_eq!(format_number(0.0512345), "0.05123");
        assert_eq!(format_number(12.5), "12.5");
        assert_eq!(format_number(-3.25), "-3.25");
    }
}
