//! The `search` query language and its parser: words, "exact phrases", prefixes (`deploy*`),
//! AND (also implicit between terms), OR, NOT and parentheses. A parsed [`SearchQuery`] is
//! turned into an FTS5 expression in which every term is a quoted string, so nothing a client
//! writes reaches FTS5's own syntax (column filters, NEAR, `^`, `+`): they are plain text here.
//!
//! Operators are upper case, as in FTS5; a lower-case `and`, `or` or `not` is a word.

use std::fmt;

/// The longest query accepted, in characters.
pub const MAX_QUERY_CHARS: usize = 256;
/// The most terms (words, phrases, prefixes) one query may hold.
pub const MAX_QUERY_TERMS: usize = 16;
/// Letters or digits a prefix needs before its `*`, so `a*` cannot expand to half the index.
pub const MIN_PREFIX_CHARS: usize = 2;

/// How a query is written, for the end of every error message.
const HOW_TO_WRITE: &str = "write words, \"exact phrases\" and prefixes like deploy*, \
    joined by AND (or nothing), OR and NOT, grouped with ( )";

/// A query that parsed: a tree of terms and operators.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    root: Node,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// One word or phrase; `prefix` when its last word ends with `*`.
    Term {
        text: String,
        prefix: bool,
    },
    /// Every positive part matches and no negative part does.
    All {
        positive: Vec<Node>,
        negative: Vec<Node>,
    },
    Any(Vec<Node>),
}

/// Why a query was refused: what is wrong and where (a character position from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    pub problem: String,
    /// Where in the query, counted in characters from 1; `None` for the query as a whole.
    pub at: Option<usize>,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some(at) => write!(f, "{} (at character {at}); {HOW_TO_WRITE}", self.problem),
            None => write!(f, "{}; {HOW_TO_WRITE}", self.problem),
        }
    }
}

fn refuse<T>(problem: impl Into<String>, at: Option<usize>) -> Result<T, QueryError> {
    Err(QueryError {
        problem: problem.into(),
        at,
    })
}

/// One piece of the query text, with the character position it starts at (from 1).
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word { text: String, prefix: bool },
    Phrase(String),
    And,
    Or,
    Not,
    Open,
    Close,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Word { text, .. } => format!("the word `{text}`"),
            Token::Phrase(text) => format!("the phrase \"{text}\""),
            Token::And => "AND".into(),
            Token::Or => "OR".into(),
            Token::Not => "NOT".into(),
            Token::Open => "`(`".into(),
            Token::Close => "`)`".into(),
        }
    }

    fn is_term(&self) -> bool {
        matches!(self, Token::Word { .. } | Token::Phrase(_))
    }
}

impl SearchQuery {
    /// Parses a client's query, refusing anything malformed with what is wrong and where.
    pub fn parse(text: &str) -> Result<SearchQuery, QueryError> {
        check_shape(text)?;
        let tokens = tokenize(text)?;
        let terms = tokens.iter().filter(|(token, _)| token.is_term()).count();
        if terms > MAX_QUERY_TERMS {
            return refuse(
                format!("the query has {terms} terms; at most {MAX_QUERY_TERMS} are allowed"),
                None,
            );
        }
        let end = text.chars().count() + 1;
        let mut parser = Parser {
            tokens,
            next: 0,
            end,
        };
        let root = parser.any()?;
        if let Some((token, at)) = parser.peek() {
            let problem = match token {
                Token::Close => "`)` has no `(` to close".to_owned(),
                other => format!("{} is out of place", other.describe()),
            };
            return refuse(problem, Some(*at));
        }
        Ok(SearchQuery { root })
    }

    /// The FTS5 expression: every term a quoted string, every group in parentheses, so FTS5's
    /// precedence rules never decide anything.
    pub fn to_fts5(&self) -> String {
        let mut out = String::new();
        write_fts5(&self.root, &mut out);
        out
    }
}

/// The whole query: not empty, not too long, no control characters.
fn check_shape(text: &str) -> Result<(), QueryError> {
    if text.trim().is_empty() {
        return refuse("the query is empty", None);
    }
    let chars = text.chars().count();
    if chars > MAX_QUERY_CHARS {
        return refuse(
            format!("the query is {chars} characters long; at most {MAX_QUERY_CHARS} are allowed"),
            None,
        );
    }
    if let Some(at) = text.chars().position(char::is_control) {
        return refuse(
            "the query holds a control character (a NUL, tab, newline or the like)",
            Some(at + 1),
        );
    }
    Ok(())
}

/// Splits the query into words, phrases, operators and parentheses.
fn tokenize(text: &str) -> Result<Vec<(Token, usize)>, QueryError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let at = i + 1;
        match chars[i] {
            c if c.is_whitespace() => i += 1,
            '(' => {
                tokens.push((Token::Open, at));
                i += 1;
            }
            ')' => {
                tokens.push((Token::Close, at));
                i += 1;
            }
            '"' => {
                let (phrase, end) = phrase(&chars, i)?;
                tokens.push((Token::Phrase(phrase), at));
                i = end;
            }
            '*' => return refuse("`*` must follow a word directly, like deploy*", Some(at)),
            _ => {
                let (token, end) = word(&chars, i)?;
                tokens.push((token, at));
                i = end;
            }
        }
    }
    Ok(tokens)
}

/// A phrase from the `"` at `start` to its closing `"`; returns it and the index after it.
fn phrase(chars: &[char], start: usize) -> Result<(String, usize), QueryError> {
    let Some(length) = chars[start + 1..].iter().position(|&c| c == '"') else {
        return refuse(
            "this `\"` opens a phrase that is never closed",
            Some(start + 1),
        );
    };
    let end = start + 1 + length;
    let text: String = chars[start + 1..end].iter().collect();
    if !has_letter_or_digit(&text) {
        return refuse(
            "this phrase has no letters or digits to search for",
            Some(start + 1),
        );
    }
    if chars.get(end + 1) == Some(&'*') {
        return refuse(
            "`*` goes after a word, not after a phrase: write deploy*",
            Some(end + 2),
        );
    }
    Ok((text, end + 1))
}

/// A word (or operator) from `start` to the next space, parenthesis or quote; returns it and
/// the index after it.
fn word(chars: &[char], start: usize) -> Result<(Token, usize), QueryError> {
    let end = chars[start..]
        .iter()
        .position(|&c| c.is_whitespace() || matches!(c, '(' | ')' | '"'))
        .map_or(chars.len(), |length| start + length);
    let raw: String = chars[start..end].iter().collect();
    match raw.as_str() {
        "AND" => return Ok((Token::And, end)),
        "OR" => return Ok((Token::Or, end)),
        "NOT" => return Ok((Token::Not, end)),
        _ => {}
    }
    let (text, prefix) = match raw.strip_suffix('*') {
        Some(stem) => (stem, true),
        None => (raw.as_str(), false),
    };
    if let Some(star) = text.find('*') {
        let at = start + text[..star].chars().count() + 1;
        return refuse("`*` may only end a word, like deploy*", Some(at));
    }
    if !has_letter_or_digit(text) {
        return refuse(
            format!("`{raw}` has no letters or digits to search for"),
            Some(start + 1),
        );
    }
    if prefix && trailing_alphanumerics(text) < MIN_PREFIX_CHARS {
        return refuse(
            format!(
                "a prefix needs at least {MIN_PREFIX_CHARS} letters or digits before its `*`, \
                 like de*"
            ),
            Some(start + 1),
        );
    }
    let token = Token::Word {
        text: text.to_owned(),
        prefix,
    };
    Ok((token, end))
}

fn has_letter_or_digit(text: &str) -> bool {
    text.chars().any(char::is_alphanumeric)
}

/// How many letters or digits end `text`: the word the index sees last, which `*` extends.
fn trailing_alphanumerics(text: &str) -> usize {
    text.chars()
        .rev()
        .take_while(|c| c.is_alphanumeric())
        .count()
}

/// A recursive-descent parser over the tokens. Nesting is bounded by the query's length.
struct Parser {
    tokens: Vec<(Token, usize)>,
    next: usize,
    /// The position just after the query's last character, for "ends too early" errors.
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&(Token, usize)> {
        self.tokens.get(self.next)
    }

    /// any := all ("OR" all)*
    fn any(&mut self) -> Result<Node, QueryError> {
        let mut parts = vec![self.all("the query")?];
        while let Some((Token::Or, _)) = self.peek() {
            self.next += 1;
            parts.push(self.all("OR")?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Node::Any(parts)
        })
    }

    /// all := unary (("AND")? unary)*, needing at least one part that is not a NOT.
    fn all(&mut self, first_after: &str) -> Result<Node, QueryError> {
        let group_at = self.peek().map_or(self.end, |(_, at)| *at);
        let mut positive = Vec::new();
        let mut negative = Vec::new();
        let mut after = first_after;
        loop {
            let (node, negated) = self.unary(after)?;
            after = "the query";
            if negated {
                negative.push(node);
            } else {
                positive.push(node);
            }
            match self.peek() {
                Some((Token::And, _)) => {
                    self.next += 1;
                    after = "AND";
                }
                Some((Token::Or | Token::Close, _)) | None => break,
                Some(_) => {}
            }
        }
        if positive.is_empty() {
            return refuse(
                "NOT needs something to exclude from: write api NOT draft, not NOT draft alone",
                Some(group_at),
            );
        }
        if negative.is_empty() && positive.len() == 1 {
            return Ok(positive.pop().expect("one part"));
        }
        Ok(Node::All { positive, negative })
    }

    /// unary := "NOT" primary | primary; returns the node and whether it was negated.
    fn unary(&mut self, after: &str) -> Result<(Node, bool), QueryError> {
        if let Some((Token::Not, at)) = self.peek() {
            let at = *at;
            self.next += 1;
            if let Some((Token::Not, _)) = self.peek() {
                return refuse("NOT NOT cancels out; leave both out", Some(at));
            }
            return Ok((self.primary("NOT")?, true));
        }
        Ok((self.primary(after)?, false))
    }

    /// primary := term | "(" any ")"; `after` names what needs it, for the error.
    fn primary(&mut self, after: &str) -> Result<Node, QueryError> {
        let Some((token, at)) = self.tokens.get(self.next).cloned() else {
            let problem = if after == "the query" {
                "the query ends where a term should follow".to_owned()
            } else {
                format!("{after} at the end has no term after it")
            };
            return refuse(problem, Some(self.end));
        };
        self.next += 1;
        let described = token.describe();
        match token {
            Token::Word { text, prefix } => Ok(Node::Term { text, prefix }),
            Token::Phrase(text) => Ok(Node::Term {
                text,
                prefix: false,
            }),
            Token::Open => {
                if let Some((Token::Close, _)) = self.peek() {
                    return refuse("`()` is empty; put a term inside", Some(at));
                }
                let inner = self.any()?;
                match self.peek() {
                    Some((Token::Close, _)) => {
                        self.next += 1;
                        Ok(inner)
                    }
                    _ => refuse("this `(` is never closed", Some(at)),
                }
            }
            Token::Close if after == "the query" => {
                refuse("`)` comes where a term should be", Some(at))
            }
            Token::Close => refuse(format!("{after} has no term after it"), Some(at)),
            Token::And | Token::Or if after == "the query" => {
                refuse(format!("{described} needs a term before it"), Some(at))
            }
            _ => refuse(
                format!("{described} comes right after {after}, where a term should be"),
                Some(at),
            ),
        }
    }
}

fn write_fts5(node: &Node, out: &mut String) {
    match node {
        Node::Term { text, prefix } => {
            out.push('"');
            out.push_str(&text.replace('"', "\"\""));
            out.push('"');
            if *prefix {
                out.push_str(" *");
            }
        }
        Node::All { positive, negative } => {
            // Parenthesised whole, so each NOT excludes from the entire AND group.
            out.push_str(if negative.is_empty() { "(" } else { "((" });
            join(positive, " AND ", out);
            out.push(')');
            for part in negative {
                out.push_str(" NOT ");
                write_fts5(part, out);
            }
            if !negative.is_empty() {
                out.push(')');
            }
        }
        Node::Any(parts) => {
            out.push('(');
            join(parts, " OR ", out);
            out.push(')');
        }
    }
}

fn join(parts: &[Node], operator: &str, out: &mut String) {
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push_str(operator);
        }
        write_fts5(part, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fts(query: &str) -> String {
        SearchQuery::parse(query)
            .unwrap_or_else(|e| panic!("{query:?} refused: {e}"))
            .to_fts5()
    }

    fn refused(query: &str) -> QueryError {
        match SearchQuery::parse(query) {
            Ok(parsed) => panic!("{query:?} parsed as {}", parsed.to_fts5()),
            Err(error) => error,
        }
    }

    #[test]
    fn words_are_quoted_and_joined_by_and() {
        assert_eq!(fts("deploy"), r#""deploy""#);
        assert_eq!(fts("api  deploy"), r#"("api" AND "deploy")"#);
        assert_eq!(fts("api AND deploy"), r#"("api" AND "deploy")"#);
    }

    #[test]
    fn phrases_keep_their_words_together() {
        assert_eq!(fts(r#""rate limit" api"#), r#"("rate limit" AND "api")"#);
    }

    #[test]
    fn prefixes_need_two_letters_before_the_star() {
        assert_eq!(fts("depl*"), r#""depl" *"#);
        assert_eq!(fts("ab*"), r#""ab" *"#);
        assert!(refused("a*").problem.contains("at least 2"));
        assert!(refused("x-a*").problem.contains("at least 2"));
        assert!(refused("*").problem.contains("must follow a word"));
        assert!(refused("de*ploy").problem.contains("may only end a word"));
        assert!(refused("de**").problem.contains("may only end a word"));
    }

    #[test]
    fn or_not_and_parentheses_nest_explicitly() {
        assert_eq!(fts("a OR b"), r#"("a" OR "b")"#);
        assert_eq!(fts("a b OR c"), r#"(("a" AND "b") OR "c")"#);
        assert_eq!(fts("a (b OR c)"), r#"("a" AND ("b" OR "c"))"#);
        assert_eq!(fts("api NOT draft"), r#"(("api") NOT "draft")"#);
        assert_eq!(
            fts("NOT draft api NOT old"),
            r#"(("api") NOT "draft" NOT "old")"#
        );
        assert_eq!(fts("a AND NOT (b OR c)"), r#"(("a") NOT ("b" OR "c"))"#);
        assert_eq!(fts("((a))"), r#""a""#);
    }

    #[test]
    fn lower_case_operators_are_words() {
        assert_eq!(fts("cats and dogs"), r#"("cats" AND "and" AND "dogs")"#);
        assert_eq!(fts("not or"), r#"("not" AND "or")"#);
    }

    #[test]
    fn fts5_syntax_is_plain_text_inside_quotes() {
        assert_eq!(fts("content:x"), r#""content:x""#);
        assert_eq!(fts("{subject}:x"), r#""{subject}:x""#);
        assert_eq!(fts("^start +plus"), r#"("^start" AND "+plus")"#);
        assert_eq!(fts("NEAR(a b)"), r#"("NEAR" AND ("a" AND "b"))"#);
        assert_eq!(fts("NEAR/3"), r#""NEAR/3""#);
        assert_eq!(fts("-x"), r#""-x""#);
        // Nothing a client writes can close the quotes.
        for query in ["a\"b", "\"a\"\"b\"", "x\" OR \"y"] {
            if let Ok(parsed) = SearchQuery::parse(query) {
                let text = parsed.to_fts5();
                assert!(!text.contains("\"\"\""), "{query:?} -> {text}");
            }
        }
    }

    #[test]
    fn punctuation_alone_is_refused() {
        for query in [":", "^", "+", "{}", "\"  \"", "\"\"", "-", "..."] {
            let error = refused(query);
            assert!(
                error.problem.contains("no letters or digits")
                    || error.problem.contains("never closed"),
                "{query:?}: {error}"
            );
        }
    }

    #[test]
    fn dangling_and_misplaced_operators_say_where() {
        let error = refused("x OR");
        assert_eq!(error.problem, "OR at the end has no term after it");
        assert_eq!(error.at, Some(5));
        let error = refused("AND AND");
        assert_eq!(error.problem, "AND needs a term before it");
        assert_eq!(error.at, Some(1));
        let error = refused("a AND AND b");
        assert!(error.problem.contains("right after AND"), "{error}");
        assert_eq!(error.at, Some(7));
        assert!(refused("OR a")
            .problem
            .contains("OR needs a term before it"));
        assert!(refused("a OR OR b").problem.contains("right after OR"));
        assert!(refused("a AND").problem.contains("AND at the end"));
        assert!(refused("a NOT").problem.contains("NOT at the end"));
        assert!(refused("NOT a").problem.contains("NOT needs something"));
        assert!(refused("a OR NOT b")
            .problem
            .contains("NOT needs something"));
        assert!(refused("a NOT NOT b").problem.contains("cancels out"));
        assert!(refused("a (OR b)")
            .problem
            .contains("OR needs a term before it"));
    }

    #[test]
    fn unbalanced_quotes_and_parentheses_are_refused() {
        let error = refused("\"rate limit");
        assert!(error.problem.contains("never closed"));
        assert_eq!(error.at, Some(1));
        assert_eq!(refused("\"").at, Some(1));
        assert_eq!(
            refused("\"a\" *").problem,
            "`*` must follow a word directly, like deploy*"
        );
        assert!(refused("\"a\"*").problem.contains("not after a phrase"));
        assert!(refused("(((").problem.contains("ends where a term"));
        let error = refused("(a (");
        assert!(error.problem.contains("ends where a term"), "{error}");
        let error = refused("(a b");
        assert_eq!(error.problem, "this `(` is never closed");
        assert_eq!(error.at, Some(1));
        let error = refused("a b)");
        assert_eq!(error.problem, "`)` has no `(` to close");
        assert_eq!(error.at, Some(4));
        assert!(refused("()").problem.contains("empty"));
        assert!(refused(")").problem.contains("`)`"));
        assert!(refused("a ( ) b").problem.contains("empty"));
    }

    #[test]
    fn empty_long_and_control_characters_are_refused() {
        assert_eq!(refused("").problem, "the query is empty");
        assert_eq!(refused("   ").problem, "the query is empty");
        let error = refused(&"x".repeat(10_000));
        assert!(error.problem.contains("10000 characters"), "{error}");
        assert!(SearchQuery::parse(&"x".repeat(MAX_QUERY_CHARS)).is_ok());
        assert!(SearchQuery::parse(&"é".repeat(MAX_QUERY_CHARS)).is_ok());
        let error = refused("ab\0cd");
        assert!(error.problem.contains("control character"));
        assert_eq!(error.at, Some(3));
        assert!(refused("a\nb").problem.contains("control character"));
    }

    #[test]
    fn at_most_sixteen_terms() {
        let sixteen = vec!["w"; MAX_QUERY_TERMS].join(" ");
        assert!(SearchQuery::parse(&sixteen).is_ok());
        let error = refused(&vec!["w"; MAX_QUERY_TERMS + 1].join(" "));
        assert!(error.problem.contains("17 terms"), "{error}");
        // Deep nesting within the length cap parses without exhausting the stack.
        let deep = format!("{}a{}", "(".repeat(120), ")".repeat(120));
        assert_eq!(fts(&deep), r#""a""#);
        assert!(refused(&"(".repeat(250))
            .problem
            .contains("ends where a term"));
    }

    #[test]
    fn unicode_words_are_terms() {
        assert_eq!(fts("café 日本語"), r#"("café" AND "日本語")"#);
        assert_eq!(fts("naïve*"), r#""naïve" *"#);
        let error = refused("a \u{202e}");
        assert!(error.problem.contains("control") || error.problem.contains("no letters"));
    }

    #[test]
    fn errors_say_how_to_write_a_query() {
        let text = refused("x OR").to_string();
        assert!(text.contains("at character 5"), "{text}");
        assert!(text.contains("\"exact phrases\""), "{text}");
    }
}
