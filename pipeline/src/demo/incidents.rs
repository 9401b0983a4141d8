//! Incidents the demo injects into its simulated model API and traffic, written on the command
//! line as `KIND@START+DURATION[:MODEL]`, e.g. `latency_spike@40s+30s:gpt-4o`.

use std::str::FromStr;
use std::time::Duration;

use sources::generator::IncidentKind;

#[derive(Debug, Clone, PartialEq)]
pub struct DemoIncident {
    pub kind: IncidentKind,
    pub start: Duration,
    pub duration: Duration,
    /// Only this model (all when `None`).
    pub model: Option<String>,
}

impl DemoIncident {
    pub fn is_active(&self, elapsed: Duration, model: &str) -> bool {
        elapsed >= self.start
            && elapsed < self.start + self.duration
            && self.model.as_deref().is_none_or(|m| m == model)
    }

    /// The schedule used when none is given: something to see in the first three minutes.
    pub fn defaults() -> Vec<DemoIncident> {
        vec![
            DemoIncident {
                kind: IncidentKind::LatencySpike,
                start: Duration::from_secs(40),
                duration: Duration::from_secs(30),
                model: Some("gpt-4o".to_string()),
            },
            DemoIncident {
                kind: IncidentKind::ErrorBurst,
                start: Duration::from_secs(100),
                duration: Duration::from_secs(20),
                model: Some("llama-3-70b".to_string()),
            },
            DemoIncident {
                kind: IncidentKind::TrafficDrop,
                start: Duration::from_secs(150),
                duration: Duration::from_secs(20),
                model: None,
            },
        ]
    }
}

impl FromStr for DemoIncident {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let usage = || {
            format!("invalid incident {text:?}: expected KIND@START+DURATION[:MODEL], e.g. latency_spike@40s+30s:gpt-4o (kinds: latency_spike, error_burst, traffic_drop)")
        };
        let (kind, rest) = text.split_once('@').ok_or_else(usage)?;
        let kind = match kind {
            "latency_spike" => IncidentKind::LatencySpike,
            "error_burst" => IncidentKind::ErrorBurst,
            "traffic_drop" => IncidentKind::TrafficDrop,
            _ => return Err(usage()),
        };
        let (timing, model) = match rest.split_once(':') {
            Some((timing, model)) if !model.is_empty() => (timing, Some(model.to_string())),
            Some(_) => return Err(usage()),
            None => (rest, None),
        };
        let (start, duration) = timing.split_once('+').ok_or_else(usage)?;
        let start = humantime::parse_duration(start).map_err(|_| usage())?;
        let duration = humantime::parse_duration(duration).map_err(|_| usage())?;
        Ok(Self {
            kind,
            start,
            duration,
            model,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_command_line_form() {
        let incident: DemoIncident = "latency_spike@40s+30s:gpt-4o".parse().unwrap();
        assert_eq!(incident.kind, IncidentKind::LatencySpike);
        assert_eq!(incident.start, Duration::from_secs(40));
        assert_eq!(incident.duration, Duration::from_secs(30));
        assert_eq!(incident.model.as_deref(), Some("gpt-4o"));
        assert!(incident.is_active(Duration::from_secs(45), "gpt-4o"));
        assert!(!incident.is_active(Duration::from_secs(45), "llama"));
        assert!(!incident.is_active(Duration::from_secs(70), "gpt-4o"));
        let all: DemoIncident = "traffic_drop@1m+10s".parse().unwrap();
        assert_eq!(all.model, None);
        assert!("meltdown@1s+1s"
            .parse::<DemoIncident>()
            .unwrap_err()
            .contains("expected KIND"));
        assert!("error_burst@1s".parse::<DemoIncident>().is_err());
    }
}
