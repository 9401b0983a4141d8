//! Tests of the file structure and of located errors.

use super::*;
use serde::Deserialize;

fn source(text: &str) -> SourceText {
    SourceText::new("p.toml", text, |name| match name {
        "QUEUE" => Some("calls".to_string()),
        _ => None,
    })
    .unwrap()
}

fn first_error(text: &str) -> ConfigError {
    let source = source(text);
    let errors = source.parse().unwrap_err();
    errors.0[0].clone()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Demo {
    size: String,
    #[serde(default)]
    count: u32,
}

#[test]
fn parses_components_inputs_and_runtime() {
    let source = source(
        r#"
[runtime]
channel_capacity = 4

[sources.calls]
type = "generator"

[operators.per_minute]
type = "window"
inputs = ["calls"]
size = "1m"

[sinks.out]
type = "console"
inputs = ["per_minute", "per_minute.late"]
"#,
    );
    let file = source.parse().unwrap();
    let pipeline = file.pipeline(None).unwrap();
    assert_eq!(pipeline.runtime.channel_capacity, 4);
    let ids: Vec<_> = pipeline
        .components
        .iter()
        .map(|c| c.path.as_str())
        .collect();
    assert_eq!(ids, ["sources.calls", "operators.per_minute", "sinks.out"]);
    let sink = &pipeline.components[2];
    assert_eq!(sink.inputs[1].component, "per_minute");
    assert_eq!(sink.inputs[1].port.as_deref(), Some("late"));
    let demo: Demo = pipeline.components[1].settings().unwrap();
    assert_eq!((demo.size.as_str(), demo.count), ("1m", 0));
}

#[test]
fn unknown_key_in_settings_points_at_the_key() {
    let source =
        source("[operators.w]\ntype = \"window\"\ninputs = [\"a\"]\nsize = \"1m\"\n  sise = 3\n");
    let file = source.parse().unwrap();
    let error = file.pipelines[0].components[0]
        .settings::<Demo>()
        .unwrap_err();
    assert_eq!((error.line, error.column), (5, 3), "{error}");
    assert_eq!(error.component.as_deref(), Some("operators.w"));
    assert!(error.message.contains("unknown field `sise`"), "{error}");
    assert!(
        error.to_string().starts_with("p.toml:5:3: operators.w: "),
        "{error}"
    );
}

#[test]
fn wrong_value_type_points_at_the_value() {
    let source = source(
        "[operators.w]\ntype = \"window\"\ninputs = [\"a\"]\nsize = \"1m\"\ncount = \"many\"\n",
    );
    let file = source.parse().unwrap();
    let error = file.pipelines[0].components[0]
        .settings::<Demo>()
        .unwrap_err();
    assert_eq!((error.line, error.column), (5, 9), "{error}");
}

#[test]
fn structural_errors_are_located() {
    let missing_type = first_error("[sources.a]\nrate = 1\n");
    assert_eq!((missing_type.line, missing_type.column), (1, 10));
    assert!(missing_type.message.contains("no `type`"));

    let no_inputs = first_error("[sources.a]\ntype = \"g\"\n[sinks.b]\ntype = \"console\"\n");
    assert_eq!((no_inputs.line, no_inputs.column), (3, 8));
    assert!(no_inputs.message.contains("needs `inputs`"));

    let top = first_error("[sources.a]\ntype = \"g\"\n[sauces.b]\ntype = \"x\"\n");
    assert_eq!((top.line, top.column), (3, 2));
    assert!(top.message.contains("unknown top-level key `sauces`"));

    let syntax = first_error("[sources.a]\ntype = \n");
    assert_eq!(syntax.line, 2, "{syntax}");
}

#[test]
fn interpolation_errors_and_values_keep_original_positions() {
    let errors =
        SourceText::new("p.toml", "[sources.a]\ntype = \"${NOPE}\"\n", |_| None).unwrap_err();
    assert_eq!((errors.0[0].line, errors.0[0].column), (2, 9));

    // A substituted value earlier on the line does not shift later columns.
    let source = source(
        "[sources.a]\ntype = \"${QUEUE}\"\n[sinks.b]\ntype=\"x\"\ninputs = [\"a\"]\n  bad = 1\n",
    );
    let file = source.parse().unwrap();
    assert_eq!(file.pipelines[0].components[0].type_name, "calls");
    let error = file.pipelines[0].components[1].error_at_key("bad", "no");
    assert_eq!((error.line, error.column), (6, 9));
}

#[test]
fn named_pipelines_are_separate() {
    let source = source(
        r#"
[pipelines.edge.sources.p]
type = "generator"
[pipelines.edge.sinks.q]
type = "console"
inputs = ["p"]
[pipelines.central.sources.r]
type = "generator"
"#,
    );
    let file = source.parse().unwrap();
    assert_eq!(file.pipelines.len(), 2);
    assert_eq!(file.pipeline(Some("edge")).unwrap().components.len(), 2);
    assert_eq!(
        file.pipeline(Some("central")).unwrap().components[0].path,
        "pipelines.central.sources.r"
    );
    assert!(file.pipeline(None).unwrap_err().contains("--pipeline"));
}
