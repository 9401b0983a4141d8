//! `${VAR}` and `${VAR:-default}` interpolation over the raw text of a config file, with a map
//! from offsets in the result back to offsets in the original, so that every error still points
//! at the line and column the user wrote. `$$` is a literal `$`.

/// One copied or substituted stretch of the output.
#[derive(Debug, Clone, Copy)]
struct Segment {
    out_start: usize,
    in_start: usize,
    len: usize,
    /// Copied verbatim (offsets map one to one); otherwise a substitution, whose every offset
    /// maps to the `${` that produced it.
    literal: bool,
}

/// The interpolated text and its offset map.
#[derive(Debug, Clone)]
pub struct Interpolated {
    pub text: String,
    segments: Vec<Segment>,
}

/// A reference to an unset variable without a default, or an unterminated `${`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpolationError {
    pub offset: usize,
    pub message: String,
}

impl Interpolated {
    /// Maps an offset in the interpolated text to one in the original text.
    pub fn original_offset(&self, out_offset: usize) -> usize {
        let index = self
            .segments
            .partition_point(|s| s.out_start <= out_offset)
            .saturating_sub(1);
        match self.segments.get(index) {
            Some(s) if s.literal => s.in_start + (out_offset - s.out_start).min(s.len),
            Some(s) => s.in_start,
            None => out_offset,
        }
    }
}

/// Interpolates `input`, looking variables up with `lookup`. Collects every error.
pub fn interpolate(
    input: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Interpolated, Vec<InterpolationError>> {
    let mut text = String::with_capacity(input.len());
    let mut segments = Vec::new();
    let mut errors = Vec::new();
    let mut literal_start = 0;
    let bytes = input.as_bytes();
    let mut i = 0;
    let flush_literal = |text: &mut String, segments: &mut Vec<Segment>, from: usize, to: usize| {
        if to > from {
            segments.push(Segment {
                out_start: text.len(),
                in_start: from,
                len: to - from,
                literal: true,
            });
            text.push_str(&input[from..to]);
        }
    };
    while i < bytes.len() {
        if bytes[i] != b'$' || i + 1 >= bytes.len() {
            i += 1;
            continue;
        }
        match bytes[i + 1] {
            b'$' => {
                flush_literal(&mut text, &mut segments, literal_start, i + 1);
                i += 2;
                literal_start = i;
            }
            b'{' => {
                let Some(close) = input[i + 2..].find('}').map(|p| i + 2 + p) else {
                    errors.push(InterpolationError {
                        offset: i,
                        message: "`${` has no closing `}`".to_string(),
                    });
                    break;
                };
                let inner = &input[i + 2..close];
                let (name, default) = match inner.split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (inner, None),
                };
                let valid_name = !name.is_empty()
                    && !name.starts_with(|c: char| c.is_ascii_digit())
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                flush_literal(&mut text, &mut segments, literal_start, i);
                if !valid_name {
                    errors.push(InterpolationError {
                        offset: i,
                        message: format!(
                            "`${{{inner}}}` is not a variable reference (expected ${{NAME}} or ${{NAME:-default}})"
                        ),
                    });
                } else {
                    let value = lookup(name)
                        .filter(|v| !(v.is_empty() && default.is_some()))
                        .or_else(|| default.map(str::to_string));
                    match value {
                        Some(value) => {
                            segments.push(Segment {
                                out_start: text.len(),
                                in_start: i,
                                len: value.len(),
                                literal: false,
                            });
                            text.push_str(&value);
                        }
                        None => errors.push(InterpolationError {
                            offset: i,
                            message: format!(
                                "environment variable `{name}` is not set and `${{{name}}}` has no default (write `${{{name}:-default}}` to give one)"
                            ),
                        }),
                    }
                }
                i = close + 1;
                literal_start = i;
            }
            _ => i += 1,
        }
    }
    flush_literal(&mut text, &mut segments, literal_start, input.len());
    if errors.is_empty() {
        Ok(Interpolated { text, segments })
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.internal".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_values_and_defaults() {
        let out = interpolate("a=${HOST} b=${PORT:-5432} c=${EMPTY:-x} d=$$5 e=$x", env).unwrap();
        assert_eq!(out.text, "a=db.internal b=5432 c=x d=$5 e=$x");
    }

    #[test]
    fn maps_offsets_back_to_the_original() {
        let input = "x = \"${HOST}\"\ny = 1";
        let out = interpolate(input, env).unwrap();
        let y_out = out.text.find('y').unwrap();
        assert_eq!(out.original_offset(y_out), input.find('y').unwrap());
        // Inside the substituted value: points at the `${`.
        let inside = out.text.find("internal").unwrap();
        assert_eq!(out.original_offset(inside), input.find("${").unwrap());
    }

    #[test]
    fn reports_unset_variables_and_bad_references_with_offsets() {
        let errors = interpolate("a = \"${NOPE}\"\nb = \"${1x}\"", env).unwrap_err();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].offset, 5);
        assert!(errors[0].message.contains("`NOPE` is not set"));
        assert!(errors[1].message.contains("not a variable reference"));
        let unterminated = interpolate("a = \"${HOST\"", env).unwrap_err();
        assert!(unterminated[0].message.contains("no closing"));
    }
}
