//! What a call cost: a price table of models (an exact name or a pattern with `*`), each with
//! USD per million input, cached-input and output tokens and an optional date from which the
//! price applies, and the cost of an api_call from its model and token counts. A call whose
//! model has no price is *unpriced* (its cost unknown, never 0); a call that reported no usage
//! has no cost to compute.
//!
//! ```toml
//! [[prices]]
//! model = "gpt-4o*"        # `*` matches any run of characters
//! input = 2.50             # USD per 1M input tokens not served from the prompt cache
//! cached_input = 1.25      # per 1M cached input tokens (default: `input`)
//! output = 10.00           # per 1M output tokens (reasoning tokens included)
//! from = "2024-10-01"      # applies to calls from this date (UTC) on (default: always)
//! ```
//!
//! When several entries match, the most specific pattern wins (an exact name, then the
//! pattern with the most literal characters), and among its entries the latest `from` not
//! after the call.

use std::path::Path;

use serde::Deserialize;

use crate::schema::api_call::ApiCall;
use crate::time::parse_rfc3339_micros;

/// One price.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// The model's name, or a pattern where `*` matches any run of characters.
    pub model: String,
    /// USD per million input tokens not served from the provider's prompt cache.
    pub input: f64,
    /// USD per million output tokens.
    pub output: f64,
    /// USD per million cached input tokens; `input` when not given.
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// The first day (UTC, `YYYY-MM-DD`) the price applies.
    #[serde(default)]
    pub from: Option<String>,
}

/// A file of prices: `[[prices]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    prices: Vec<Price>,
}

/// A price ready to match.
#[derive(Debug, Clone)]
struct Entry {
    price: Price,
    /// The pattern's literal pieces, split at `*`.
    pieces: Vec<String>,
    exact: bool,
    literal_len: usize,
    from_micros: i64,
}

impl Entry {
    fn matches(&self, model: &str) -> bool {
        if self.exact {
            return self.price.model == model;
        }
        glob_matches(&self.pieces, model)
    }
}

/// `pieces` (a pattern split at `*`) matches `text`: the first piece at its start, the last
/// at its end, the rest in order between.
fn glob_matches(pieces: &[String], text: &str) -> bool {
    let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else {
        return true;
    };
    if pieces.len() == 1 {
        return first == text;
    }
    if !text.starts_with(first.as_str()) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    if !text.ends_with(last.as_str()) {
        return false;
    }
    for piece in &pieces[1..pieces.len() - 1] {
        match rest.find(piece.as_str()) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

/// What pricing made of a call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cost {
    Usd(f64),
    /// It reported usage, and its model has no price.
    Unpriced,
    /// It reported no usage (a failed call, or an API without token counts).
    NoUsage,
}

/// A table of prices.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    entries: Vec<Entry>,
}

impl PriceTable {
    /// The table of `prices`; an error names the entry (by its place and model) and what is
    /// wrong with it.
    pub fn new(prices: Vec<Price>) -> Result<Self, String> {
        let mut entries = Vec::with_capacity(prices.len());
        for (index, price) in prices.into_iter().enumerate() {
            let place = format!("price {} (model {:?})", index + 1, price.model);
            if price.model.is_empty() {
                return Err(format!("{place}: `model` is empty"));
            }
            for (name, value) in [
                ("input", Some(price.input)),
                ("output", Some(price.output)),
                ("cached_input", price.cached_input),
            ] {
                if let Some(value) = value {
                    if !value.is_finite() || value < 0.0 {
                        return Err(format!(
                            "{place}: `{name}` must be a price in USD per million tokens, at least 0; got {value}"
                        ));
                    }
                }
            }
            let from_micros = match &price.from {
                None => i64::MIN,
                Some(day) => {
                    parse_rfc3339_micros(&format!("{day}T00:00:00Z")).ok_or_else(|| {
                        format!("{place}: `from` must be a date such as 2025-01-31; got {day:?}")
                    })?
                }
            };
            let pieces: Vec<String> = price.model.split('*').map(str::to_string).collect();
            let exact = pieces.len() == 1;
            let literal_len = pieces.iter().map(String::len).sum();
            entries.push(Entry {
                price,
                pieces,
                exact,
                literal_len,
                from_micros,
            });
        }
        Ok(Self { entries })
    }

    /// The prices in a TOML file of `[[prices]]` tables; an error names the file.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the price file {}: {e}", path.display()))?;
        let file: PriceFile =
            toml::from_str(&text).map_err(|e| format!("the price file {}: {e}", path.display()))?;
        Self::new(file.prices).map_err(|e| format!("the price file {}: {e}", path.display()))
    }

    /// This table's prices followed by `other`'s (which only add models this one lacks, or
    /// dates it does not have).
    pub fn extended(mut self, other: PriceTable) -> Self {
        self.entries.extend(other.entries);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The price of `model` for a call at `time` (µs since the epoch).
    pub fn price(&self, model: &str, time: i64) -> Option<&Price> {
        let mut best: Option<&Entry> = None;
        for entry in &self.entries {
            if entry.from_micros > time || !entry.matches(model) {
                continue;
            }
            let better = match best {
                None => true,
                Some(best) => {
                    (entry.exact, entry.literal_len, entry.from_micros)
                        > (best.exact, best.literal_len, best.from_micros)
                }
            };
            if better {
                best = Some(entry);
            }
        }
        best.map(|entry| &entry.price)
    }

    /// What `call` cost.
    pub fn cost(&self, call: &ApiCall) -> Cost {
        if call.input_tokens.is_none() && call.output_tokens.is_none() {
            return Cost::NoUsage;
        }
        let Some(price) = call
            .model
            .as_deref()
            .and_then(|model| self.price(model, call.event_time))
        else {
            return Cost::Unpriced;
        };
        Cost::Usd(price.cost(
            call.input_tokens.unwrap_or(0),
            call.cached_input_tokens.unwrap_or(0),
            call.output_tokens.unwrap_or(0),
        ))
    }
}

impl Price {
    /// USD for `input` tokens of which `cached` came from the cache, and `output` tokens.
    pub fn cost(&self, input: u32, cached: u32, output: u32) -> f64 {
        let cached = cached.min(input);
        let uncached = f64::from(input - cached);
        let cached_price = self.cached_input.unwrap_or(self.input);
        (uncached * self.input + f64::from(cached) * cached_price + f64::from(output) * self.output)
            / 1_000_000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(model: &str, input: f64, output: f64, from: Option<&str>) -> Price {
        Price {
            model: model.into(),
            input,
            output,
            cached_input: None,
            from: from.map(String::from),
        }
    }

    fn call(model: &str, input: Option<u32>, cached: Option<u32>, output: Option<u32>) -> ApiCall {
        ApiCall {
            event_time: parse_rfc3339_micros("2025-06-01T12:00:00Z").unwrap(),
            model: Some(model.into()),
            input_tokens: input,
            cached_input_tokens: cached,
            output_tokens: output,
            ..Default::default()
        }
    }

    #[test]
    fn the_most_specific_pattern_and_the_latest_date_win() {
        let table = PriceTable::new(vec![
            price("gpt-4o*", 5.0, 15.0, None),
            price("gpt-4o-mini*", 0.15, 0.60, None),
            price("gpt-4o", 2.5, 10.0, Some("2024-10-01")),
            price("gpt-4o", 99.0, 99.0, Some("2030-01-01")),
            price("*", 1.0, 1.0, None),
        ])
        .unwrap();
        let at = parse_rfc3339_micros("2025-06-01T00:00:00Z").unwrap();
        assert_eq!(table.price("gpt-4o", at).unwrap().input, 2.5);
        assert_eq!(table.price("gpt-4o-2024-08-06", at).unwrap().input, 5.0);
        assert_eq!(
            table.price("gpt-4o-mini-2024-07-18", at).unwrap().input,
            0.15
        );
        assert_eq!(table.price("llama-3-70b", at).unwrap().input, 1.0);
        let before = parse_rfc3339_micros("2024-01-01T00:00:00Z").unwrap();
        assert_eq!(table.price("gpt-4o", before).unwrap().input, 5.0);
    }

    #[test]
    fn costs_count_cached_input_at_its_own_price_and_unknowns_are_never_zero() {
        let mut cached = price("claude-*", 3.0, 15.0, None);
        cached.cached_input = Some(0.30);
        let table = PriceTable::new(vec![cached, price("gpt-4o", 2.5, 10.0, None)]).unwrap();
        // 1,000 input of which 800 cached, 500 output: 200 * 3 + 800 * 0.3 + 500 * 15 per 1M.
        let Cost::Usd(usd) = table.cost(&call("claude-sonnet-4", Some(1000), Some(800), Some(500)))
        else {
            panic!("priced");
        };
        assert!(
            (usd - (600.0 + 240.0 + 7500.0) / 1e6).abs() < 1e-12,
            "{usd}"
        );
        // Without a cache price, cached tokens cost the input price.
        let Cost::Usd(usd) = table.cost(&call("gpt-4o", Some(1000), Some(800), None)) else {
            panic!("priced");
        };
        assert!((usd - 2500.0 / 1e6).abs() < 1e-12);
        assert_eq!(
            table.cost(&call("mystery", Some(5), None, Some(5))),
            Cost::Unpriced
        );
        assert_eq!(table.cost(&call("gpt-4o", None, None, None)), Cost::NoUsage);
    }

    #[test]
    fn globs_match_in_order() {
        let pieces = |p: &str| p.split('*').map(String::from).collect::<Vec<_>>();
        assert!(glob_matches(&pieces("a*c*e"), "abcde"));
        assert!(glob_matches(&pieces("*-mini"), "gpt-4o-mini"));
        assert!(!glob_matches(&pieces("a*c*e"), "aec"));
        assert!(!glob_matches(&pieces("ab*ba"), "aba"));
        assert!(glob_matches(&pieces("*"), "anything"));
    }

    #[test]
    fn bad_prices_are_refused_with_their_place() {
        let error = PriceTable::new(vec![price("m", -1.0, 1.0, None)]).unwrap_err();
        assert!(
            error.contains("price 1 (model \"m\")") && error.contains("`input`"),
            "{error}"
        );
        let error = PriceTable::new(vec![price("m", 1.0, 1.0, Some("June"))]).unwrap_err();
        assert!(error.contains("`from`"), "{error}");
    }

    #[test]
    fn the_example_price_file_loads() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/prices/list-prices.toml");
        let table = PriceTable::from_file(&path).unwrap();
        assert!(!table.is_empty());
    }
}
