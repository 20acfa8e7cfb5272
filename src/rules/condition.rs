//! CEL, compiled once: a rule's condition and every value its responses build. The variables
//! an expression sees are `message` (the broker message's JSON), `event` (where it came from),
//! `model` (the model an event is about), `found` (the model `find` looked up) and `now`
//! (epoch seconds); beside CEL's standard library it has `lower(s)` (for iequals) and
//! `epoch(rfc3339)` (epoch seconds, for timediff).

use std::sync::{Arc, OnceLock};

use cel::objects::{Key, Map};
use cel::{Context, Env, ExecutionError, FunctionContext, Program, Value};

/// The variables an expression may name.
pub const VARIABLES: [&str; 5] = ["message", "event", "model", "found", "now"];

/// A compiled CEL expression and its source.
#[derive(Clone)]
pub struct Expr {
    /// The source, as written.
    pub text: String,
    program: Arc<Program>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.text)
    }
}

fn env() -> Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::stdlib())).clone()
}

/// The names comprehensions bind (`files.all(f, …)` binds `f`).
fn bound_names(text: &str) -> Vec<String> {
    static FIND: OnceLock<regex::Regex> = OnceLock::new();
    let find = FIND.get_or_init(|| {
        regex::Regex::new(
            r"\b(?:all|exists|exists_one|map|filter)\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,",
        )
        .expect("a valid pattern")
    });
    find.captures_iter(text).map(|c| c[1].to_string()).collect()
}

/// Whether `name` is a function an expression may call: an operator, CEL's standard library
/// (which refuses a function of its name being added beside it), or ours.
fn is_function(name: &str) -> bool {
    if name.starts_with(['_', '@', '!']) || ["lower", "epoch"].contains(&name) {
        return true;
    }
    let mut probe = Context::with_env(env());
    probe.add_function(name, || 0i64).is_err()
}

/// The first `matches(…)` regex literal in `text` that does not compile, and why.
fn bad_regex(text: &str) -> Option<String> {
    static FIND: OnceLock<regex::Regex> = OnceLock::new();
    let find = FIND.get_or_init(|| {
        regex::Regex::new(r#"matches\(\s*(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")\s*\)"#)
            .expect("a valid pattern")
    });
    for caps in find.captures_iter(text) {
        let literal = caps.get(1).or_else(|| caps.get(2))?.as_str();
        let pattern = literal.replace("\\\\", "\\");
        if let Err(e) = regex::Regex::new(&pattern) {
            return Some(format!("bad regex {literal:?}: {e}"));
        }
    }
    None
}

impl Expr {
    /// Compiles `text`, refusing a syntax error, an unknown variable or a bad regex literal.
    pub fn compile(text: &str) -> Result<Self, String> {
        let program = Program::compile(text).map_err(|e| format!("not CEL: {e}"))?;
        let bound = bound_names(text);
        for var in program.references().variables() {
            if !VARIABLES.contains(&var) && !bound.iter().any(|b| b == var) {
                return Err(format!(
                    "unknown variable {var:?} (known: {})",
                    VARIABLES.join(", ")
                ));
            }
        }
        for function in program.references().functions() {
            if !is_function(function) {
                return Err(format!("unknown function {function:?}"));
            }
        }
        if let Some(e) = bad_regex(text) {
            return Err(e);
        }
        Ok(Self {
            text: text.to_string(),
            program: Arc::new(program),
        })
    }

    /// Evaluates over `vars` (JSON values by variable name).
    pub fn eval(&self, vars: &Vars) -> Result<serde_json::Value, String> {
        let mut ctx = Context::with_env(env());
        let _ = ctx.add_function("lower", |s: Arc<String>| s.to_lowercase());
        let _ = ctx.add_function("epoch", epoch);
        for (name, value) in &vars.0 {
            ctx.add_variable_from_value(*name, from_json(value));
        }
        let value = self.program.execute(&ctx).map_err(|e| describe(&e))?;
        Ok(to_json(&value))
    }

    /// Evaluates as a condition: true, false, or why it is neither.
    pub fn test(&self, vars: &Vars) -> Result<bool, String> {
        match self.eval(vars)? {
            serde_json::Value::Bool(b) => Ok(b),
            other => Err(format!("gives {other}, not a bool")),
        }
    }
}

/// Whether an evaluation error means the expression is wrong whatever the message (a type
/// error), not just that this message lacks a field.
pub fn is_type_error(message: &str) -> bool {
    !(message.starts_with("No such key") || message.starts_with("Undeclared reference"))
}

fn describe(e: &ExecutionError) -> String {
    e.to_string()
}

/// `epoch("2026-11-26T17:00:00Z")`: epoch seconds of an RFC 3339 time.
fn epoch(ftx: &FunctionContext, text: Arc<String>) -> Result<i64, ExecutionError> {
    chrono::DateTime::parse_from_rfc3339(&text)
        .map(|t| t.timestamp())
        .map_err(|e| ftx.error(format!("{text:?} is not an RFC 3339 time: {e}")))
}

/// The variables of one evaluation.
#[derive(Debug, Clone, Default)]
pub struct Vars(pub Vec<(&'static str, serde_json::Value)>);

impl Vars {
    /// Adds (or replaces) a variable.
    pub fn set(&mut self, name: &'static str, value: serde_json::Value) {
        self.0.retain(|(n, _)| *n != name);
        self.0.push((name, value));
    }
}

/// JSON as a CEL value; whole numbers are `int` (as CEL literals are), so arithmetic on a
/// message's fields and literals meets no int/uint mismatch.
fn from_json(value: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match value {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::String(Arc::new(s.clone())),
        J::Array(items) => Value::List(Arc::new(items.iter().map(from_json).collect())),
        J::Object(fields) => Value::Map(Map {
            map: Arc::new(
                fields
                    .iter()
                    .map(|(k, v)| (Key::String(Arc::new(k.clone())), from_json(v)))
                    .collect(),
            ),
        }),
    }
}

/// A CEL value as JSON.
fn to_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::List(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(Map { map }) => J::Object(
            map.iter()
                .map(|(k, v)| {
                    let k = match k {
                        Key::Int(i) => i.to_string(),
                        Key::Uint(u) => u.to_string(),
                        Key::Bool(b) => b.to_string(),
                        Key::String(s) => s.to_string(),
                    };
                    (k, to_json(v))
                })
                .collect(),
        ),
        Value::Int(i) => (*i).into(),
        Value::UInt(u) => (*u).into(),
        Value::Float(f) => (*f).into(),
        Value::String(s) => J::String(s.to_string()),
        Value::Bytes(b) => J::Array(b.iter().map(|b| (*b).into()).collect()),
        Value::Bool(b) => (*b).into(),
        Value::Null => J::Null,
        other => J::String(format!("{other:?}")),
    }
}
