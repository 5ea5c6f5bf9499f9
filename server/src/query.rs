//! ECE's list parameters on Muster's answers: `q` (a small, strict part of Elasticsearch's
//! `query_string` syntax), `sort`, `from` and `size`, applied to the JSON of each item.
//!
//! `q` holds terms joined by whitespace or `AND` (all must match), groups of them joined by
//! `OR` (one group must match). A term is `field:value` (the field's value, or any value of
//! it in a list, equals `value`, letter case aside; `*` in `value` stands for any run of
//! characters) or a bare `value` (any field equals it). `NOT term` or `-term` negates it, and
//! `"…"` quotes a value with spaces. Fields are dotted paths into an item
//! (`status.connected`, `roles.role_name`), from the list each endpoint allows: anything else
//! is refused, never silently ignored.

use serde_json::Value;
use std::cmp::Ordering;

/// Why `q` or `sort` was refused; the message names what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid(pub String);

#[derive(Debug, PartialEq)]
struct Term {
    field: Option<String>,
    test: Test,
    negated: bool,
}

/// What a term asks of a field's values.
#[derive(Debug, PartialEq)]
enum Test {
    /// Equal to the pattern (lower case, `*` for any run of characters).
    Like(String),
    /// `_exists_:field`: the field has a value.
    Exists,
    /// `field:>N`, `>=N`, `<N`, `<=N` on a number.
    Range(Cmp, f64),
}

#[derive(Debug, PartialEq, Clone, Copy)]
enum Cmp {
    Gt,
    Ge,
    Lt,
    Le,
}

/// A parsed `q`: groups joined by `OR`, each a list of terms that must all hold.
#[derive(Debug, PartialEq)]
pub struct Query(Vec<Vec<Term>>);

/// Splits `q` into words, keeping quoted values whole (quotes removed).
fn words(q: &str) -> Result<Vec<String>, Invalid> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut quoted = false;
    for ch in q.chars() {
        match ch {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if quoted {
        return Err(Invalid("q: a quote is not closed".into()));
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

impl Query {
    /// Parses `q`, allowing only `fields`.
    pub fn parse(q: &str, fields: &[&str]) -> Result<Query, Invalid> {
        if q.len() > 4096 {
            return Err(Invalid("q: longer than 4096 bytes".into()));
        }
        let mut groups = vec![vec![]];
        let mut negate_next = false;
        for w in words(q)? {
            match w.as_str() {
                "OR" | "||" => {
                    if negate_next || groups.last().is_none_or(Vec::is_empty) {
                        return Err(Invalid(format!("q: OR needs a term on each side in {q:?}")));
                    }
                    groups.push(vec![]);
                    continue;
                }
                "AND" | "&&" => continue,
                "NOT" | "!" => {
                    negate_next = !negate_next;
                    continue;
                }
                _ => {}
            }
            let (negated, w) = match w.strip_prefix('-') {
                Some(rest) if !rest.is_empty() => (!negate_next, rest.to_string()),
                _ => (negate_next, w),
            };
            negate_next = false;
            let known = |field: &str| {
                if fields.contains(&field) {
                    Ok(())
                } else {
                    Err(Invalid(format!(
                        "q: no field {field:?} here; fields: {}",
                        fields.join(", ")
                    )))
                }
            };
            let term = match w.split_once(':') {
                Some(("_exists_", field)) => {
                    known(field)?;
                    Term {
                        field: Some(field.to_string()),
                        test: Test::Exists,
                        negated,
                    }
                }
                Some((field, value)) => {
                    known(field)?;
                    if value.is_empty() {
                        return Err(Invalid(format!("q: {field}: has no value")));
                    }
                    Term {
                        field: Some(field.to_string()),
                        test: test_of(field, value)?,
                        negated,
                    }
                }
                None => Term {
                    field: None,
                    test: Test::Like(w.to_lowercase()),
                    negated,
                },
            };
            if let Some(g) = groups.last_mut() {
                g.push(term);
            }
        }
        if negate_next || (groups.len() > 1 && groups.last().is_some_and(Vec::is_empty)) {
            return Err(Invalid(format!("q: ends without a term: {q:?}")));
        }
        Ok(Query(groups))
    }

    /// Whether `item` matches. An empty query matches everything.
    pub fn matches(&self, item: &Value, fields: &[&str]) -> bool {
        self.0.iter().any(|group| {
            group.iter().all(|t| {
                let values = match &t.field {
                    Some(f) => values_at(item, f),
                    None => fields.iter().flat_map(|f| values_at(item, f)).collect(),
                };
                let hit =
                    match &t.test {
                        Test::Exists => !values.is_empty(),
                        Test::Like(p) => values.iter().any(|v| glob(p, v)),
                        Test::Range(cmp, n) => values
                            .iter()
                            .filter_map(|v| v.parse::<f64>().ok())
                            .any(|v| match cmp {
                                Cmp::Gt => v > *n,
                                Cmp::Ge => v >= *n,
                                Cmp::Lt => v < *n,
                                Cmp::Le => v <= *n,
                            }),
                    };
                hit != t.negated
            })
        })
    }
}

/// The test `value` asks for: a range (`>N`, as the shell-escaped `\\>N` too) or a pattern.
fn test_of(field: &str, value: &str) -> Result<Test, Invalid> {
    let v = value.strip_prefix('\\').unwrap_or(value);
    let (cmp, n) = if let Some(n) = v.strip_prefix(">=") {
        (Cmp::Ge, n)
    } else if let Some(n) = v.strip_prefix("<=") {
        (Cmp::Le, n)
    } else if let Some(n) = v.strip_prefix('>') {
        (Cmp::Gt, n)
    } else if let Some(n) = v.strip_prefix('<') {
        (Cmp::Lt, n)
    } else {
        return Ok(Test::Like(value.to_lowercase()));
    };
    match n.parse::<f64>() {
        Ok(n) if n.is_finite() => Ok(Test::Range(cmp, n)),
        _ => Err(Invalid(format!("q: {field}: {n:?} is not a number"))),
    }
}

/// Every scalar at the dotted `path` in `v` (through lists), as lower-case text.
fn values_at(v: &Value, path: &str) -> Vec<String> {
    let mut at = vec![v];
    for part in path.split('.') {
        at = at
            .into_iter()
            .flat_map(|v| -> Vec<&Value> {
                match v {
                    Value::Array(items) => items.iter().filter_map(|i| i.get(part)).collect(),
                    v => v.get(part).into_iter().collect(),
                }
            })
            .collect();
    }
    let mut out = vec![];
    for v in at {
        match v {
            Value::Array(items) => out.extend(items.iter().filter_map(scalar)),
            v => out.extend(scalar(v)),
        }
    }
    out
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_lowercase()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `pattern` (lower case, `*` for any run of characters) against `text`.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// A parsed `sort`: fields, each ascending unless `:desc` (or a leading `-`).
#[derive(Debug, PartialEq, Eq)]
pub struct Sort(Vec<(String, bool)>);

impl Sort {
    pub fn parse(sort: &str, fields: &[&str]) -> Result<Sort, Invalid> {
        let mut keys = vec![];
        for s in sort.split(',').map(str::trim) {
            let (s, desc) = match s.strip_prefix('-') {
                Some(rest) => (rest, true),
                None => (s, false),
            };
            let (field, desc) = match s.split_once(':') {
                Some((f, "asc")) => (f, desc),
                Some((f, "desc")) => (f, !desc),
                Some((_, order)) => {
                    return Err(Invalid(format!(
                        "sort: order {order:?} is neither asc nor desc"
                    )))
                }
                None => (s, desc),
            };
            if !fields.contains(&field) {
                return Err(Invalid(format!(
                    "sort: no field {field:?} here; fields: {}",
                    fields.join(", ")
                )));
            }
            keys.push((field.to_string(), desc));
        }
        Ok(Sort(keys))
    }

    /// Orders `a` and `b` by the sort's fields (numbers as numbers, text as text).
    pub fn compare(&self, a: &Value, b: &Value) -> Ordering {
        for (field, desc) in &self.0 {
            let (x, y) = (first_at(a, field), first_at(b, field));
            let o = match (x, y) {
                (Some(Value::Number(x)), Some(Value::Number(y))) => x
                    .as_f64()
                    .partial_cmp(&y.as_f64())
                    .unwrap_or(Ordering::Equal),
                (x, y) => x.and_then(scalar).cmp(&y.and_then(scalar)),
            };
            let o = if *desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    }
}

fn first_at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut at = v;
    for part in path.split('.') {
        at = match at {
            Value::Array(items) => items.first()?.get(part)?,
            v => v.get(part)?,
        };
    }
    Some(at)
}

/// `from` and `size` as ECE takes them: at most 10,000 items in one answer.
pub fn window(from: Option<u32>, size: Option<u32>) -> Result<(usize, usize), Invalid> {
    let size = size.unwrap_or(100);
    if size > 10_000 {
        return Err(Invalid(format!("size: {size} is over 10000")));
    }
    Ok((from.unwrap_or(0) as usize, size as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const F: &[&str] = &["id", "status.connected", "roles.role_name", "n"];

    fn q(s: &str) -> Query {
        match Query::parse(s, F) {
            Ok(q) => q,
            Err(e) => panic!("{s}: {e:?}"),
        }
    }

    #[test]
    fn terms_fields_and_lists_match_as_query_string_does() {
        let a = json!({"id":"Alloc-1","status":{"connected":true},"roles":[{"role_name":"proxy"},{"role_name":"allocator"}],"n":4});
        assert!(q("").matches(&a, F));
        assert!(q("id:alloc-1").matches(&a, F));
        assert!(q("id:ALLOC-*").matches(&a, F));
        assert!(q("id:*-1 AND status.connected:true").matches(&a, F));
        assert!(!q("id:alloc-1 status.connected:false").matches(&a, F));
        assert!(q("id:other OR roles.role_name:allocator").matches(&a, F));
        assert!(q("NOT roles.role_name:director").matches(&a, F));
        assert!(!q("-roles.role_name:proxy").matches(&a, F));
        assert!(q("n:4").matches(&a, F));
        assert!(
            q("proxy").matches(&a, F),
            "a bare word searches every field"
        );
        assert!(q("id:\"alloc-1\"").matches(&a, F));
        assert!(q("n:>3 AND n:<=4").matches(&a, F));
        assert!(q("n:\\>3").matches(&a, F), "as ecctl's docs write it");
        assert!(!q("n:>=5").matches(&a, F));
        assert!(q("_exists_:roles.role_name").matches(&a, F));
        assert!(!q("_exists_:status.connected AND -_exists_:id").matches(&a, F));
    }

    #[test]
    fn unknown_fields_and_broken_queries_are_refused_by_name() {
        for (bad, says) in [
            ("zone:x", "no field \"zone\""),
            ("id:", "has no value"),
            ("OR id:x", "OR needs"),
            ("id:x OR", "ends without"),
            ("id:\"x", "quote"),
            ("NOT", "ends without"),
            ("n:>x", "not a number"),
            ("_exists_:zone", "no field"),
        ] {
            match Query::parse(bad, F) {
                Err(Invalid(m)) => assert!(m.contains(says), "{bad}: {m}"),
                Ok(q) => panic!("{bad} was taken: {q:?}"),
            }
        }
    }

    #[test]
    fn sort_orders_numbers_as_numbers_and_refuses_unknown_fields() -> Result<(), Invalid> {
        let mut v = [
            json!({"id":"b","n":10}),
            json!({"id":"a","n":9}),
            json!({"id":"c","n":10}),
        ];
        let s = Sort::parse("n:desc,id", F)?;
        v.sort_by(|a, b| s.compare(a, b));
        let ids: Vec<&str> = v.iter().filter_map(|x| x["id"].as_str()).collect();
        assert_eq!(ids, ["b", "c", "a"]);
        let s = Sort::parse("-id", F)?;
        v.sort_by(|a, b| s.compare(a, b));
        assert_eq!(v[0]["id"], "c");
        assert!(Sort::parse("zone", F).is_err());
        assert!(Sort::parse("id:up", F).is_err());
        Ok(())
    }

    #[test]
    fn window_defaults_and_bounds() {
        assert_eq!(window(None, None), Ok((0, 100)));
        assert_eq!(window(Some(5), Some(0)), Ok((5, 0)));
        assert!(window(None, Some(10_001)).is_err());
    }

    #[test]
    fn glob_stars() {
        assert!(glob("a*c", "abc"));
        assert!(glob("*", ""));
        assert!(!glob("a*c", "ab"));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("ab*ba", "aba"));
    }
}
