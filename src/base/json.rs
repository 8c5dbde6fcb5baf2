//! Parsing JSON files into typed values with errors that name the field and
//! never repeat the offending value (which may be a credential).

use serde::de::DeserializeOwned;

/// What is wrong with a JSON document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonProblem {
    /// Dotted path of the field at fault, when the fault is inside a value.
    pub field: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for JsonProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "field `{field}`: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl JsonProblem {
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        JsonProblem {
            field: Some(field.into()),
            reason: reason.into(),
        }
    }
}

/// Parses `bytes` as `T`. Empty and truncated input, syntax errors and values
/// of the wrong type are told apart; string values are never quoted back.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, JsonProblem> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(JsonProblem {
            field: None,
            reason: "the file is empty".into(),
        });
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let reason = match inner.classify() {
            serde_json::error::Category::Eof => format!(
                "the JSON ends early (truncated?) at line {} column {}",
                inner.line(),
                inner.column()
            ),
            serde_json::error::Category::Syntax => format!(
                "not valid JSON at line {} column {}",
                inner.line(),
                inner.column()
            ),
            _ => redact_values(&strip_position(&inner.to_string())),
        };
        JsonProblem {
            field: (path != ".").then_some(path),
            reason,
        }
    })
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// serde quotes string values in type errors (`invalid type: string "…",
/// expected …`); the value may be a token, so it is dropped.
fn redact_values(message: &str) -> String {
    let Some(start) = message.find("string \"") else {
        return message.to_owned();
    };
    let head = &message[..start + "string".len()];
    match message.rfind("\", expected") {
        Some(end) if end > start => format!("{head}{}", &message[end + 1..]),
        _ => head.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        inner: Inner,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    #[test]
    fn names_the_field_and_hides_the_value() {
        let p = parse::<Outer>(br#"{"inner":{"n":"sk-secret-value"}}"#).unwrap_err();
        assert_eq!(p.field.as_deref(), Some("inner.n"));
        assert!(!p.to_string().contains("sk-secret"), "{p}");
        assert!(
            p.reason.contains("invalid type: string, expected u32"),
            "{p}"
        );
    }

    #[test]
    fn tells_empty_truncated_and_syntax_apart() {
        assert_eq!(
            parse::<Outer>(b"  \n").unwrap_err().reason,
            "the file is empty"
        );
        assert!(
            parse::<Outer>(b"{\"inner\":")
                .unwrap_err()
                .reason
                .contains("ends early")
        );
        assert!(
            parse::<Outer>(b"{,}")
                .unwrap_err()
                .reason
                .contains("not valid JSON")
        );
    }

    #[test]
    fn missing_fields_are_named() {
        let p = parse::<Outer>(br#"{"inner":{}}"#).unwrap_err();
        assert_eq!(p.to_string(), "field `inner`: missing field `n`");
    }
}
