//! PromQL read as text, without a PromQL parser (promtool does the real parsing where a test
//! needs it): bracket and string-literal balance, the `connmon_` metric names an expression reads
//! with the function call that directly encloses each (so a test can require rate() around
//! counters), and the label lists of `by (…)` / `without (…)` clauses.

/// Checks that (), [] and {} balance and nest, and string literals close; quotes and brackets
/// inside string literals do not count.
pub fn check_brackets(expr: &str) -> Result<(), String> {
    let mut stack: Vec<char> = Vec::new();
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                let mut closed = false;
                while let Some(d) = chars.next() {
                    if d == '\\' && c != '`' {
                        chars.next();
                    } else if d == c {
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    return Err(format!("unterminated {c}…{c} string"));
                }
            }
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let want = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                match stack.pop() {
                    Some(open) if open == want => {}
                    Some(open) => return Err(format!("{open:?} closed by {c:?}")),
                    None => return Err(format!("{c:?} without an opening {want:?}")),
                }
            }
            _ => {}
        }
    }
    match stack.last() {
        None => Ok(()),
        Some(open) => Err(format!("{open:?} never closed")),
    }
}

/// One `connmon_` metric name in an expression, and the function whose parentheses directly
/// enclose it (`rate` in `sum(rate(m[5m]))`; None at top level or in a plain grouping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    pub metric: String,
    pub function: Option<String>,
}

/// Every `connmon_…` identifier outside string literals and label matchers, with its innermost
/// enclosing function call.
pub fn metric_uses(expr: &str) -> Vec<Use> {
    let is_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    // For each open '(': the identifier right before it (if any).
    let mut parens: Vec<Option<String>> = Vec::new();
    let mut braces = 0usize;
    let mut last_ident: Option<String> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' && c != '`' {
                        i += 1;
                    }
                    i += 1;
                }
                last_ident = None;
            }
            '{' => braces += 1,
            '}' => braces = braces.saturating_sub(1),
            '(' => parens.push(last_ident.take()),
            ')' => {
                parens.pop();
                last_ident = None;
            }
            c if c.is_whitespace() => {}
            c if is_start(c) => {
                let start = i;
                while i + 1 < chars.len() && is_name(chars[i + 1]) {
                    i += 1;
                }
                let ident: String = chars[start..=i].iter().collect();
                if braces == 0 && ident.starts_with("connmon_") {
                    out.push(Use { metric: ident.clone(), function: parens.last().cloned().flatten() });
                }
                last_ident = Some(ident);
            }
            _ => last_ident = None,
        }
        i += 1;
    }
    out
}

/// Label lists of `by (…)` / `without (…)` clauses.
pub fn grouping_lists(expr: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for kw in ["by", "without"] {
        let mut from = 0;
        while let Some(pos) = expr[from..].find(kw) {
            let at = from + pos;
            from = at + kw.len();
            let before_ok = expr[..at].chars().next_back().is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
            let rest = expr[at + kw.len()..].trim_start();
            if before_ok && rest.starts_with('(') {
                if let Some(end) = rest.find(')') {
                    out.push(rest[1..end].split(',').map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect());
                }
            }
        }
    }
    out
}
