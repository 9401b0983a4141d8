//! Changing a running `alert` operator's rules: each operator built through
//! [`build_with_control`] registers a [`RuleHandle`] in an [`AlertControl`]. A new rule set is
//! compiled against the operator's input before it is accepted (so a bad rule is refused with
//! the reason, never half-applied); the operator picks it up before its next batch or
//! watermark. Alerts of unchanged rules keep their state; alerts of removed or changed rules
//! that were active are resolved.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use engine::config::ConfigError;
use engine::registry::{BuildContext, BuiltOperator};

use super::rule::{Rule, RuleConfig};

/// One operator's rules, shared between it and whoever changes them.
pub struct RuleHandle {
    /// The operator's place in the file, e.g. `pipelines.central.operators.alerts`.
    pub path: String,
    input: SchemaRef,
    key_names: Vec<String>,
    rules: Mutex<Vec<RuleConfig>>,
    version: AtomicU64,
}

impl RuleHandle {
    pub(super) fn new(
        path: String,
        input: SchemaRef,
        key_names: Vec<String>,
        rules: Vec<RuleConfig>,
    ) -> Self {
        Self {
            path,
            input,
            key_names,
            rules: Mutex::new(rules),
            version: AtomicU64::new(0),
        }
    }

    /// The rules in effect (or about to be), in order.
    pub fn rules(&self) -> Vec<RuleConfig> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Bumped by every accepted change.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Checks a rule set against the operator's input: unique names, and each rule compiles.
    /// The error names the rule and the setting.
    pub fn check(&self, rules: &[RuleConfig]) -> Result<(), String> {
        for (i, rule) in rules.iter().enumerate() {
            if rules[..i].iter().any(|r| r.name == rule.name) {
                return Err(format!("two rules are named `{}`", rule.name));
            }
            Rule::compile(rule, &self.input, &self.key_names).map_err(|(setting, message)| {
                format!("rule `{}`: `{setting}`: {message}", rule.name)
            })?;
        }
        Ok(())
    }

    /// Replaces the rule set, after checking it.
    pub fn replace(&self, rules: Vec<RuleConfig>) -> Result<(), String> {
        self.check(&rules)?;
        *self.rules.lock().unwrap_or_else(|e| e.into_inner()) = rules;
        self.version.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

/// Every controllable alert operator of a process.
#[derive(Default)]
pub struct AlertControl {
    handles: Mutex<Vec<Arc<RuleHandle>>>,
}

impl AlertControl {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn handles(&self) -> Vec<Arc<RuleHandle>> {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn register(&self, handle: Arc<RuleHandle>) {
        let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        handles.retain(|h| h.path != handle.path);
        handles.push(handle);
    }
}

/// Builds an `alert` operator whose rules `control` can change while it runs.
pub fn build_with_control(
    ctx: &BuildContext<'_, '_>,
    control: Arc<AlertControl>,
) -> Result<BuiltOperator, ConfigError> {
    let (mut operator, outputs) = super::build_operator(ctx)?;
    let handle = Arc::new(RuleHandle::new(
        ctx.spec.path.clone(),
        operator.input.clone(),
        operator.key_names.clone(),
        operator.configs.clone(),
    ));
    operator.control = Some((handle.clone(), handle.version()));
    control.register(handle);
    Ok(BuiltOperator {
        operator: Box::new(operator),
        outputs,
    })
}
