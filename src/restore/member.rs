//! A member of the restored cluster and the encodings etcd keeps it in: the `members`
//! bucket of the db ([`Member::backend_key`], [`Member::backend_value`]), the ConfChange
//! context of the WAL ([`Member::context_json`]) and the v2 store of the `.snap` file
//! ([`Member::raft_attributes_json`]); all Go `encoding/json` byte for byte
//! ([`go_json_string`]).

use serde::Serialize;

/// Most members of a restored cluster: the v2 store's event history capacity
/// (`newWatchHub(1000)`), which holds one event per member in the `.snap` file.
pub const EVENT_HISTORY_CAPACITY: usize = 1000;

/// One member of the restored cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Member {
    /// `--name` of the member.
    pub name: String,
    /// Member ID (`computeMemberId`: sha1 of the sorted peer URLs + token, first 8 bytes BE;
    /// [`super::ids::member_id`]).
    #[serde(serialize_with = "hex_id")]
    pub id: u64,
    /// Peer URLs, sorted (as etcd keeps them: `types.NewURLs` sorts them).
    pub peer_urls: Vec<String>,
}

/// Serializes an ID as 16 hex digits (our reports' spelling of member and cluster IDs).
pub(crate) fn hex_id<S: serde::Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{id:016x}"))
}

impl Member {
    /// `json.Marshal(membership.Member)` as etcd writes it into the ConfChange context:
    /// `{"id":<u64>,"peerURLs":[...],"name":"..."}` (no learner flag, no client URLs).
    pub fn context_json(&self) -> String {
        format!(
            r#"{{"id":{},"peerURLs":[{}],"name":{}}}"#,
            self.id,
            self.urls_json(),
            go_json_string(&self.name)
        )
    }

    /// `json.Marshal(RaftAttributes)`: `{"peerURLs":[...]}`.
    pub fn raft_attributes_json(&self) -> String {
        format!(r#"{{"peerURLs":[{}]}}"#, self.urls_json())
    }

    /// The key in bucket `members`: the ID in lower-case hex without padding
    /// (`types.ID.String()` = `strconv.FormatUint(id, 16)`; membership/store.go
    /// `backendMemberKey`).
    pub fn backend_key(&self) -> String {
        format!("{:x}", self.id)
    }

    /// The value in bucket `members`: Go `json.Marshal(Member)` =
    /// `{"id":<u64>,"peerURLs":[..],"name":".."}` (`isLearner` and `clientURLs` omitted when
    /// empty; `name` omitted when empty).
    pub fn backend_value(&self) -> String {
        let mut s = format!(r#"{{"id":{},"peerURLs":[{}]"#, self.id, self.urls_json());
        if !self.name.is_empty() {
            s.push_str(&format!(r#","name":{}"#, go_json_string(&self.name)));
        }
        s.push('}');
        s
    }

    fn urls_json(&self) -> String {
        self.peer_urls
            .iter()
            .map(|u| go_json_string(u))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A JSON string literal exactly as Go's `encoding/json` writes it (HTML-safe escaping of
/// `<`, `>`, `&`, and of U+2028/U+2029), so that member JSON matches etcd's byte for byte.
pub fn go_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_json_like_go() {
        let m = Member {
            id: 0x71405583d3e2d5ce,
            name: "a".into(),
            peer_urls: vec!["http://127.0.0.1:2380".into()],
        };
        assert_eq!(m.backend_key(), "71405583d3e2d5ce");
        assert_eq!(
            m.backend_value(),
            r#"{"id":8160616549479273934,"peerURLs":["http://127.0.0.1:2380"],"name":"a"}"#
        );
        assert_eq!(m.context_json(), m.backend_value());
        assert_eq!(
            m.raft_attributes_json(),
            r#"{"peerURLs":["http://127.0.0.1:2380"]}"#
        );
        let small = Member {
            id: 0xab,
            name: String::new(),
            peer_urls: vec!["http://x/?a=1&b=<2>".into()],
        };
        assert_eq!(small.backend_key(), "ab");
        assert_eq!(
            small.backend_value(),
            r#"{"id":171,"peerURLs":["http://x/?a=1\u0026b=\u003c2\u003e"]}"#
        );
    }

    #[test]
    fn go_json_escapes() {
        assert_eq!(
            go_json_string("a<b>&\"\\\n\u{1}"),
            r#""a\u003cb\u003e\u0026\"\\\n\u0001""#
        );
    }
}
