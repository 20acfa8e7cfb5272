//! The dependency graph from `model-deps.json` (XOS format): which kinds wait on which, the
//! topological sync order, and the link fields that name each dependency. The models declare
//! their links too ([`crate::step::Model::LINKS`]); the file operators read must agree.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::path::Path;

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};

use crate::step::{Link, SyncKind};
use crate::store::LinkFields;

/// Why `model-deps.json` was rejected; every variant names the culprit.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {reason}")]
    Format { path: String, reason: String },
    #[error("{path}: kind `{kind}` ({context}) has no sync step registered in steps/ (known kinds: {known})")]
    NoSyncStep {
        path: String,
        kind: String,
        context: String,
        known: String,
    },
    #[error("{path}: dependency cycle {cycle}")]
    Cycle { path: String, cycle: String },
    #[error("{path} and the {kind} model disagree on its links: the file says {file}, the model (`LINKS` of its `impl Model` in steps/) says {model}")]
    Links {
        path: String,
        kind: String,
        file: String,
        model: String,
    },
}

/// One declared dependency: objects of `kind` link to a `target` object through `field`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub kind: String,
    pub target: String,
    /// Field in the dependent's spec holding the target's key.
    pub field: String,
    /// Name of the reverse relation on the target (shown by `describe`).
    pub reverse: String,
}

/// The loaded graph: edges run from a dependency to its dependents.
#[derive(Debug, Clone)]
pub struct DepGraph {
    graph: DiGraph<String, ()>,
    order: Vec<String>,
    deps: Vec<Dependency>,
}

type DepsFile = BTreeMap<String, Vec<(String, String, String)>>;

impl DepGraph {
    /// Reads and validates `path` against the kinds that have sync steps: every kind in it
    /// has one, and every kind's links are the ones its model declares.
    pub fn load(path: &Path, sync_kinds: &[SyncKind]) -> Result<Self, GraphError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| GraphError::Read {
            path: name.clone(),
            source,
        })?;
        let graph = Self::parse(&name, &text, sync_kinds)?;
        graph.check_links(&name, sync_kinds)?;
        Ok(graph)
    }

    /// Parses the XOS format: `{ "Model": [["DependsOn", "src_field", "dst_field"]] }`,
    /// checking that every kind in it has a sync step (not the links: see [`Self::load`]).
    pub fn parse(name: &str, text: &str, sync_kinds: &[SyncKind]) -> Result<Self, GraphError> {
        let file: DepsFile = serde_json::from_str(text).map_err(|e| GraphError::Format {
            path: name.to_string(),
            reason: format!("{e} (expected {{\"Kind\": [[\"DependsOnKind\", \"src_field\", \"dst_field\"], …]}})"),
        })?;
        let known: BTreeSet<&str> = sync_kinds.iter().map(|k| k.name).collect();
        let no_step = |kind: &str, context: String| GraphError::NoSyncStep {
            path: name.to_string(),
            kind: kind.to_string(),
            context,
            known: if known.is_empty() {
                "none".into()
            } else {
                known.iter().copied().collect::<Vec<_>>().join(", ")
            },
        };
        let mut deps = Vec::new();
        for (kind, entries) in &file {
            if !known.contains(kind.as_str()) {
                return Err(no_step(kind, "a model in the file".into()));
            }
            for (target, field, reverse) in entries {
                if !known.contains(target.as_str()) {
                    return Err(no_step(target, format!("a dependency of {kind}")));
                }
                if field.is_empty() {
                    return Err(GraphError::Format {
                        path: name.to_string(),
                        reason: format!("{kind} → {target}: the src_field (link field) is empty"),
                    });
                }
                deps.push(Dependency {
                    kind: kind.clone(),
                    target: target.clone(),
                    field: field.clone(),
                    reverse: reverse.clone(),
                });
            }
        }
        let mut graph = DiGraph::new();
        let mut index: HashMap<&str, NodeIndex> = HashMap::new();
        for kind in &known {
            index.insert(kind, graph.add_node(kind.to_string()));
        }
        for d in &deps {
            graph.add_edge(index[d.target.as_str()], index[d.kind.as_str()], ());
        }
        let order = match toposort(&graph, None) {
            Ok(nodes) => nodes.into_iter().map(|n| graph[n].clone()).collect(),
            Err(_) => {
                return Err(GraphError::Cycle {
                    path: name.to_string(),
                    cycle: describe_cycle(&graph),
                })
            }
        };
        Ok(Self { graph, order, deps })
    }

    /// Checks that each kind's links in the file (`name`) are the ones its model declares,
    /// in any order; the error shows both.
    pub fn check_links(&self, name: &str, sync_kinds: &[SyncKind]) -> Result<(), GraphError> {
        for kind in sync_kinds {
            let mut file: Vec<(&str, &str, &str)> = self
                .deps
                .iter()
                .filter(|d| d.kind == kind.name)
                .map(|d| (d.target.as_str(), d.field.as_str(), d.reverse.as_str()))
                .collect();
            let mut model: Vec<(&str, &str, &str)> = kind
                .links
                .iter()
                .map(|l| (l.target, l.field, l.reverse))
                .collect();
            file.sort_unstable();
            model.sort_unstable();
            if file != model {
                return Err(self.disagreement(name, kind));
            }
        }
        Ok(())
    }

    /// The error saying what the file and `kind`'s model each declare.
    fn disagreement(&self, name: &str, kind: &SyncKind) -> GraphError {
        let file: Vec<String> = self
            .deps
            .iter()
            .filter(|d| d.kind == kind.name)
            .map(|d| xos(&d.target, &d.field, &d.reverse))
            .collect();
        let model: Vec<String> = kind.links.iter().map(Link::to_string).collect();
        GraphError::Links {
            path: name.to_string(),
            kind: kind.name.to_string(),
            file: format!("[{}]", file.join(", ")),
            model: format!("[{}]", model.join(", ")),
        }
    }

    /// Kinds in sync order: every kind after the kinds it depends on. Deletion runs in reverse.
    pub fn sync_order(&self) -> &[String] {
        &self.order
    }

    /// The declared dependencies.
    pub fn dependencies(&self) -> &[Dependency] {
        &self.deps
    }

    /// Whether some kind depends on `kind`: only then can objects wait for one of its objects.
    pub fn has_dependents(&self, kind: &str) -> bool {
        self.deps.iter().any(|d| d.target == kind)
    }

    /// Link fields per kind, for the store to index on upsert.
    pub fn link_fields(&self) -> LinkFields {
        let mut out = LinkFields::new();
        for d in &self.deps {
            out.entry(d.kind.clone())
                .or_default()
                .push((d.field.clone(), d.target.clone()));
        }
        out
    }

    /// Depth of each kind (0 for kinds that depend on nothing).
    pub fn levels(&self) -> BTreeMap<String, usize> {
        let mut level: BTreeMap<String, usize> = BTreeMap::new();
        for kind in &self.order {
            let l = self
                .deps
                .iter()
                .filter(|d| &d.kind == kind)
                .map(|d| level[&d.target] + 1)
                .max()
                .unwrap_or(0);
            level.insert(kind.clone(), l);
        }
        level
    }

    /// A plain-text rendering: one line per kind with what it depends on.
    pub fn to_text(&self) -> String {
        let levels = self.levels();
        let mut out = String::new();
        for kind in &self.order {
            let on: Vec<String> = self
                .deps
                .iter()
                .filter(|d| &d.kind == kind)
                .map(|d| format!("{} (via {})", d.target, d.field))
                .collect();
            let on = if on.is_empty() {
                "nothing".to_string()
            } else {
                on.join(", ")
            };
            let _ = writeln!(out, "{kind} [level {}] depends on {on}", levels[kind]);
        }
        out
    }

    /// Graphviz DOT, edges from dependency to dependent labelled with the link field.
    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph thalamus {\n  rankdir=LR;\n");
        for n in self.graph.node_indices() {
            let _ = writeln!(out, "  \"{}\";", self.graph[n]);
        }
        for d in &self.deps {
            let _ = writeln!(
                out,
                "  \"{}\" -> \"{}\" [label=\"{}\"];",
                d.target, d.kind, d.field
            );
        }
        out.push_str("}\n");
        out
    }
}

/// One dependency as `model-deps.json` writes it: `["Target", "field", "reverse"]`.
fn xos(target: &str, field: &str, reverse: &str) -> String {
    format!("[{target:?}, {field:?}, {reverse:?}]")
}

/// Names the kinds of one cycle in edge order, e.g. `A → B → A`.
fn describe_cycle(graph: &DiGraph<String, ()>) -> String {
    for scc in tarjan_scc(graph) {
        let Some(&start) = scc.iter().min_by_key(|n| graph[**n].as_str()) else {
            continue;
        };
        if scc.len() == 1 && !graph.contains_edge(start, start) {
            continue;
        }
        // Breadth-first search inside the component for the shortest way back to `start`.
        let members: HashSet<NodeIndex> = scc.iter().copied().collect();
        let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        let mut queue = VecDeque::from([start]);
        while let Some(n) = queue.pop_front() {
            for m in graph.neighbors(n) {
                if m == start {
                    let mut path = vec![n];
                    while let Some(&p) = prev.get(path.last().unwrap_or(&start)) {
                        path.push(p);
                    }
                    if path.last() != Some(&start) {
                        path.push(start);
                    }
                    path.reverse();
                    path.push(start);
                    return path
                        .iter()
                        .map(|n| graph[*n].as_str())
                        .collect::<Vec<_>>()
                        .join(" → ");
                }
                if members.contains(&m) && m != start && !prev.contains_key(&m) {
                    prev.insert(m, n);
                    queue.push_back(m);
                }
            }
        }
    }
    "(unknown)".into()
}
