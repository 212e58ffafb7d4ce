//! rabbitmqctl's output: banner, tab-separated header and rows, or JSON.

use serde_json::{Map, Value};

use crate::Invocation;

/// A field by dotted path (`queue.name`).
pub fn field<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

/// A value as rabbitmqctl's table formatter prints it: strings bare, lists as
/// `[a, b]`, tables as JSON (rabbitmqctl prints Erlang terms there).
pub fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => {
            let items: Vec<String> = a.iter().map(|x| cell(Some(x))).collect();
            format!("[{}]", items.join(", "))
        }
        Some(Value::Object(o)) if o.is_empty() => "[]".to_owned(),
        Some(other) => other.to_string(),
    }
}

pub struct Printer<'a> {
    pub inv: &'a Invocation,
    pub out: &'a mut dyn std::io::Write,
}

impl Printer<'_> {
    /// A banner line ("Listing users ..."), unless quiet (and never in JSON).
    pub fn banner(&mut self, s: &str) {
        if !self.inv.quiet && !self.inv.json {
            let _ = writeln!(self.out, "{s}");
        }
    }

    /// A result line ("Success", "Queue was successfully deleted ...").
    pub fn line(&mut self, s: &str) {
        if !self.inv.silent {
            let _ = writeln!(self.out, "{s}");
        }
    }

    pub fn raw(&mut self, s: &str) {
        let _ = writeln!(self.out, "{s}");
    }

    /// Rows of `items` with `columns`; each column is (printed name, dotted path in the
    /// API's JSON).
    pub fn table(&mut self, columns: &[(String, String)], items: &[Value]) {
        if self.inv.json {
            let rows: Vec<Value> = items
                .iter()
                .map(|it| {
                    let mut m = Map::new();
                    for (name, path) in columns {
                        m.insert(name.clone(), field(it, path).cloned().unwrap_or(Value::Null));
                    }
                    Value::Object(m)
                })
                .collect();
            let _ = writeln!(self.out, "{}", Value::Array(rows));
            return;
        }
        if !self.inv.no_headers {
            let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
            let _ = writeln!(self.out, "{}", names.join("\t"));
        }
        for it in items {
            let cells: Vec<String> = columns.iter().map(|(_, p)| cell(field(it, p))).collect();
            let _ = writeln!(self.out, "{}", cells.join("\t"));
        }
    }

    /// One JSON value (JSON formatter) or its pretty form.
    pub fn json_value(&mut self, v: &Value) {
        let text = if self.inv.json { v.to_string() } else { serde_json::to_string_pretty(v).unwrap_or_default() };
        let _ = writeln!(self.out, "{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_look_like_rabbitmqctl() {
        assert_eq!(cell(Some(&json!(["administrator", "monitoring"]))), "[administrator, monitoring]");
        assert_eq!(cell(Some(&json!([]))), "[]");
        assert_eq!(cell(Some(&json!({}))), "[]");
        assert_eq!(cell(Some(&json!(12))), "12");
        assert_eq!(cell(Some(&json!("q"))), "q");
        assert_eq!(cell(None), "");
        assert_eq!(field(&json!({"queue": {"name": "q"}}), "queue.name"), Some(&json!("q")));
    }
}
