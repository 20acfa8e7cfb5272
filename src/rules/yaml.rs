//! YAML read into nodes that remember their line, so every refusal names it.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A YAML value and the line (1-based) it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The line the value starts on.
    pub line: usize,
    /// The value.
    pub value: Value,
}

/// A YAML value; scalars keep their text and whether they were quoted.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar's text, and whether it was plain (unquoted).
    Scalar(String, bool),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping's entries in order: key, key's line, value.
    Map(Vec<(String, usize, Node)>),
}

impl Node {
    /// The scalar's text, if this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s, _) => Some(s),
            _ => None,
        }
    }

    /// The value as JSON (plain scalars typed as YAML 1.2 core: null, bool, int, float).
    pub fn to_json(&self) -> serde_json::Value {
        match &self.value {
            Value::Scalar(s, plain) => {
                if !plain {
                    return serde_json::Value::String(s.clone());
                }
                match s.as_str() {
                    "null" | "~" | "" => serde_json::Value::Null,
                    "true" => true.into(),
                    "false" => false.into(),
                    _ => s
                        .parse::<i64>()
                        .map(Into::into)
                        .or_else(|_| s.parse::<f64>().map(Into::into))
                        .unwrap_or_else(|_| serde_json::Value::String(s.clone())),
                }
            }
            Value::Seq(items) => items.iter().map(Node::to_json).collect(),
            Value::Map(entries) => entries
                .iter()
                .map(|(k, _, v)| (k.clone(), v.to_json()))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        }
    }
}

#[derive(Default)]
struct Builder {
    stack: Vec<(Node, Option<(String, usize)>)>,
    docs: Vec<Node>,
    error: Option<String>,
}

impl Builder {
    fn push(&mut self, node: Node) {
        let Some((parent, pending)) = self.stack.last_mut() else {
            self.docs.push(node);
            return;
        };
        match &mut parent.value {
            Value::Seq(items) => items.push(node),
            Value::Map(entries) => match pending.take() {
                Some((key, line)) => entries.push((key, line, node)),
                None => match node.value {
                    Value::Scalar(key, _) => *pending = Some((key, node.line)),
                    _ => {
                        self.error
                            .get_or_insert(format!("line {}: a key must be a scalar", node.line));
                    }
                },
            },
            Value::Scalar(..) => {}
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(text, style, _, _) => self.push(Node {
                line,
                value: Value::Scalar(text, style == TScalarStyle::Plain),
            }),
            Event::SequenceStart(..) => self.stack.push((
                Node {
                    line,
                    value: Value::Seq(Vec::new()),
                },
                None,
            )),
            Event::MappingStart(..) => self.stack.push((
                Node {
                    line,
                    value: Value::Map(Vec::new()),
                },
                None,
            )),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, _)) = self.stack.pop() {
                    self.push(node);
                }
            }
            Event::Alias(_) => {
                self.error
                    .get_or_insert(format!("line {line}: aliases are not supported in rules"));
            }
            _ => {}
        }
    }
}

/// Parses one YAML document (an empty text is an empty mapping).
pub fn parse(text: &str) -> Result<Node, String> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser
        .load(&mut builder, false)
        .map_err(|e| format!("line {}: {}", e.marker().line(), e.info()))?;
    if let Some(e) = builder.error {
        return Err(e);
    }
    Ok(builder.docs.into_iter().next().unwrap_or(Node {
        line: 1,
        value: Value::Map(Vec::new()),
    }))
}
