//! The DAG of one pipeline: resolves `inputs`, rejects unknown ids, sinks used as inputs,
//! duplicates and cycles (each error located in the file), orders components topologically,
//! and renders the graph as DOT or Mermaid.

use std::collections::HashMap;

use crate::config::{ComponentSpec, ConfigError, ConfigErrors, PipelineSpec};
use crate::metrics::ComponentKind;

/// A validated pipeline graph.
#[derive(Debug)]
pub struct Graph<'s, 'a> {
    pub components: &'s [ComponentSpec<'a>],
    /// Indices into `components`, every component after all of its inputs.
    pub order: Vec<usize>,
    /// For each component, the index of each of its inputs' components.
    pub upstream: Vec<Vec<usize>>,
}

impl<'s, 'a> Graph<'s, 'a> {
    pub fn new(pipeline: &'s PipelineSpec<'a>) -> Result<Self, ConfigErrors> {
        let components = pipeline.components.as_slice();
        let mut errors = Vec::new();
        let mut by_id: HashMap<&str, usize> = HashMap::new();
        for (index, component) in components.iter().enumerate() {
            if let Some(previous) = by_id.insert(component.id.as_str(), index) {
                errors.push(component.error(format!(
                    "the id `{}` is already used by `{}`: ids must be unique across sources, operators and sinks",
                    component.id, components[previous].path
                )));
            }
        }
        let mut upstream = vec![Vec::new(); components.len()];
        for (index, component) in components.iter().enumerate() {
            for (input_index, input) in component.inputs.iter().enumerate() {
                match by_id.get(input.component.as_str()) {
                    Some(&up) if components[up].kind == ComponentKind::Sink => {
                        errors.push(component.error_at_input(
                            input_index,
                            format!(
                                "input `{input}` is a sink; inputs must be sources or operators"
                            ),
                        ))
                    }
                    Some(&up) => upstream[index].push(up),
                    None => errors.push(component.error_at_input(
                        input_index,
                        format!(
                            "unknown input `{input}`; expected one of: {}",
                            candidates(components)
                        ),
                    )),
                }
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let order = topological_order(components, &upstream)?;
        Ok(Self {
            components,
            order,
            upstream,
        })
    }

    /// Graphviz DOT.
    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph pipeline {\n  rankdir=LR;\n");
        for component in self.components {
            let shape = match component.kind {
                ComponentKind::Source => "invhouse",
                ComponentKind::Operator => "box",
                ComponentKind::Sink => "house",
            };
            out.push_str(&format!(
                "  \"{}\" [shape={shape}, label=\"{}\\n({})\"];\n",
                component.id, component.id, component.type_name
            ));
        }
        for component in self.components {
            for input in &component.inputs {
                match &input.port {
                    Some(port) => out.push_str(&format!(
                        "  \"{}\" -> \"{}\" [label=\"{port}\"];\n",
                        input.component, component.id
                    )),
                    None => out.push_str(&format!(
                        "  \"{}\" -> \"{}\";\n",
                        input.component, component.id
                    )),
                }
            }
        }
        out.push_str("}\n");
        out
    }

    /// A Mermaid flowchart.
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        for component in self.components {
            let label = format!("{}<br/>({})", component.id, component.type_name);
            let node = match component.kind {
                ComponentKind::Source => {
                    format!("  {}([\"{label}\"])\n", mermaid_id(&component.id))
                }
                ComponentKind::Operator => {
                    format!("  {}[\"{label}\"]\n", mermaid_id(&component.id))
                }
                ComponentKind::Sink => format!("  {}[(\"{label}\")]\n", mermaid_id(&component.id)),
            };
            out.push_str(&node);
        }
        for component in self.components {
            for input in &component.inputs {
                let arrow = match &input.port {
                    Some(port) => format!("-- {port} -->"),
                    None => "-->".to_string(),
                };
                out.push_str(&format!(
                    "  {} {arrow} {}\n",
                    mermaid_id(&input.component),
                    mermaid_id(&component.id)
                ));
            }
        }
        out
    }
}

fn mermaid_id(id: &str) -> String {
    id.replace('-', "_")
}

fn candidates(components: &[ComponentSpec<'_>]) -> String {
    let ids: Vec<&str> = components
        .iter()
        .filter(|c| c.kind != ComponentKind::Sink)
        .map(|c| c.id.as_str())
        .collect();
    if ids.is_empty() {
        "(no sources or operators are defined)".to_string()
    } else {
        ids.join(", ")
    }
}

fn topological_order(
    components: &[ComponentSpec<'_>],
    upstream: &[Vec<usize>],
) -> Result<Vec<usize>, ConfigErrors> {
    let count = components.len();
    let mut indegree: Vec<usize> = upstream.iter().map(|u| u.len()).collect();
    let mut downstream = vec![Vec::new(); count];
    for (index, ups) in upstream.iter().enumerate() {
        for &up in ups {
            downstream[up].push(index);
        }
    }
    let mut ready: Vec<usize> = (0..count).filter(|&i| indegree[i] == 0).rev().collect();
    let mut order = Vec::with_capacity(count);
    while let Some(index) = ready.pop() {
        order.push(index);
        for &down in downstream[index].iter().rev() {
            indegree[down] -= 1;
            if indegree[down] == 0 {
                ready.push(down);
            }
        }
    }
    if order.len() == count {
        return Ok(order);
    }
    // Report the cycle through the first component left over.
    let remaining: Vec<usize> = (0..count).filter(|&i| indegree[i] > 0).collect();
    let start = remaining[0];
    let mut path = vec![start];
    let mut current = start;
    loop {
        let next = upstream[current]
            .iter()
            .copied()
            .find(|u| indegree[*u] > 0)
            .expect("a component left in a cycle has an input in the cycle");
        if let Some(position) = path.iter().position(|&p| p == next) {
            let mut cycle: Vec<&str> = path[position..]
                .iter()
                .rev()
                .map(|&i| components[i].id.as_str())
                .collect();
            cycle.push(cycle[0]);
            let at = path[position];
            let input_index = components[at]
                .inputs
                .iter()
                .position(|i| {
                    upstream[at]
                        .iter()
                        .any(|&u| components[u].id == i.component && indegree[u] > 0)
                })
                .unwrap_or(0);
            let error: ConfigError = components[at].error_at_input(
                input_index,
                format!(
                    "cycle in the pipeline: {}; a pipeline must be acyclic",
                    cycle.join(" -> ")
                ),
            );
            return Err(error.into());
        }
        path.push(next);
        current = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SourceText;

    fn graph_errors(text: &str) -> ConfigErrors {
        let source = SourceText::new("g.toml", text, |_| None).unwrap();
        let file = source.parse().unwrap();
        Graph::new(&file.pipelines[0]).unwrap_err()
    }

    #[test]
    fn orders_components_after_their_inputs_and_renders() {
        let source = SourceText::new(
            "g.toml",
            r#"
[sinks.out]
type = "console"
inputs = ["w", "w.late"]
[operators.w]
type = "window"
inputs = ["f"]
[operators.f]
type = "filter"
inputs = ["a", "b"]
[sources.a]
type = "generator"
[sources.b]
type = "file"
"#,
            |_| None,
        )
        .unwrap();
        let file = source.parse().unwrap();
        let graph = Graph::new(&file.pipelines[0]).unwrap();
        let names: Vec<&str> = graph
            .order
            .iter()
            .map(|&i| graph.components[i].id.as_str())
            .collect();
        let position = |id: &str| names.iter().position(|n| *n == id).unwrap();
        assert!(position("a") < position("f") && position("b") < position("f"));
        assert!(position("f") < position("w") && position("w") < position("out"));
        let dot = graph.to_dot();
        assert!(dot.contains("\"w\" -> \"out\" [label=\"late\"]"), "{dot}");
        let mermaid = graph.to_mermaid();
        assert!(mermaid.contains("w -- late --> out"), "{mermaid}");
        assert!(mermaid.contains("a([\"a<br/>(generator)\"])"), "{mermaid}");
    }

    #[test]
    fn unknown_inputs_are_located_and_list_candidates() {
        let errors = graph_errors(
            "[sources.a]\ntype = \"g\"\n[sinks.s]\ntype = \"console\"\ninputs = [\"a\", \"nope\"]\n",
        );
        let error = &errors.0[0];
        assert_eq!((error.line, error.column), (5, 16), "{error}");
        assert!(error
            .message
            .contains("unknown input `nope`; expected one of: a"));
    }

    #[test]
    fn sinks_cannot_be_inputs() {
        let errors = graph_errors(
            "[sources.a]\ntype = \"g\"\n[sinks.s]\ntype = \"c\"\ninputs = [\"a\"]\n[sinks.t]\ntype = \"c\"\ninputs = [\"s\"]\n",
        );
        assert!(errors.0[0].message.contains("is a sink"));
        assert_eq!(errors.0[0].line, 8);
    }

    #[test]
    fn cycles_are_reported_with_their_path() {
        let errors = graph_errors(
            "[sources.a]\ntype = \"g\"\n[operators.x]\ntype = \"f\"\ninputs = [\"a\", \"y\"]\n[operators.y]\ntype = \"f\"\ninputs = [\"x\"]\n",
        );
        let error = &errors.0[0];
        assert!(error.message.contains("cycle in the pipeline"), "{error}");
        assert!(
            error.message.contains("x -> y -> x") || error.message.contains("y -> x -> y"),
            "{error}"
        );
    }

    #[test]
    fn duplicate_ids_across_sections_are_errors() {
        let errors =
            graph_errors("[sources.a]\ntype = \"g\"\n[sinks.a]\ntype = \"c\"\ninputs = [\"a\"]\n");
        assert!(errors.0[0].message.contains("already used by `sources.a`"));
    }
}
