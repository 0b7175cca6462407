use super::*;
use core_router::topic::filter_matches;
use SubscribeCheck::*;

fn acl(text: &str) -> Acl {
    Acl::parse(text).expect("valid acl")
}

#[test]
fn empty_file_denies_everything() {
    let a = acl("");
    assert!(!a.may_publish(None, "c", "a"));
    assert!(!a.may_receive(Some("u"), "c", "a"));
    assert_eq!(a.may_subscribe(None, "c", "a"), Denied);
}

#[test]
fn comments_and_blank_lines() {
    let a = acl("# comment\n\n   \n  # indented comment\r\ntopic a/b\r\n\t\n");
    assert!(a.may_publish(None, "c", "a/b"));
    assert!(a.may_receive(None, "c", "a/b"));
    assert!(!a.may_publish(None, "c", "a/c"));
}

#[test]
fn anonymous_rules_before_any_user_line() {
    let a = acl("topic read public/#\nuser alice\ntopic alice/#\n");
    assert!(a.may_receive(None, "c", "public/x"));
    assert!(!a.may_publish(None, "c", "public/x"));
    assert!(!a.may_receive(None, "c", "alice/x"));
    // A user does not get the anonymous rules.
    assert!(!a.may_receive(Some("alice"), "c", "public/x"));
    assert!(a.may_publish(Some("alice"), "c", "alice/x"));
    // Unknown user: no topic rules at all.
    assert!(!a.may_receive(Some("bob"), "c", "alice/x"));
    assert!(!a.may_receive(Some("bob"), "c", "public/x"));
}

#[test]
fn user_rules_usernames_with_spaces_and_repeated_blocks() {
    let a = acl(
        "user Jane Doe\ntopic write jd/in\nuser bob\ntopic bob\nuser Jane Doe\ntopic read jd/out\n",
    );
    assert!(a.may_publish(Some("Jane Doe"), "c", "jd/in"));
    assert!(!a.may_receive(Some("Jane Doe"), "c", "jd/in"));
    assert!(a.may_receive(Some("Jane Doe"), "c", "jd/out"));
    assert!(!a.may_publish(Some("Jane Doe"), "c", "jd/out"));
    assert!(!a.may_publish(Some("Jane"), "c", "jd/in"));
    assert!(a.may_publish(Some("bob"), "c", "bob"));
}

#[test]
fn readwrite_default_and_access_words() {
    let a = acl("topic rw1\ntopic readwrite rw2\ntopic read r\ntopic write w\n");
    for t in ["rw1", "rw2"] {
        assert!(a.may_publish(None, "c", t));
        assert!(a.may_receive(None, "c", t));
    }
    assert!(a.may_receive(None, "c", "r"));
    assert!(!a.may_publish(None, "c", "r"));
    assert!(a.may_publish(None, "c", "w"));
    assert!(!a.may_receive(None, "c", "w"));
    // Mosquitto quirk: a single word is the topic, even an access word.
    let a = acl("topic read\n");
    assert!(a.may_publish(None, "c", "read"));
    // With an access word, the topic is the rest of the line and may contain spaces.
    let a = acl("topic read  a topic/with spaces  \n");
    assert!(a.may_receive(None, "c", "a topic/with spaces"));
}

#[test]
fn deny_wins_regardless_of_order() {
    let a = acl("topic deny a/secret\ntopic a/#\ntopic deny a/+/hidden\n");
    assert!(a.may_publish(None, "c", "a/x"));
    assert!(!a.may_publish(None, "c", "a/secret"));
    assert!(!a.may_receive(None, "c", "a/secret"));
    assert!(!a.may_receive(None, "c", "a/x/hidden"));
    assert!(a.may_receive(None, "c", "a/x/shown"));
    // A pattern deny wins over a user grant, and a user deny over a pattern grant.
    let a = acl("user u\ntopic #\ntopic deny p/own\npattern deny secret/%c\npattern p/#\n");
    assert!(a.may_publish(Some("u"), "c1", "secret/c2"));
    assert!(!a.may_publish(Some("u"), "c1", "secret/c1"));
    assert!(!a.may_publish(Some("u"), "c1", "p/own"));
    assert!(a.may_publish(Some("v"), "c1", "p/own"));
}

#[test]
fn patterns_substitute_username_and_client_id() {
    let a = acl("user alice\ntopic read x\npattern write sensor/%u/data\npattern clients/%c/#\npattern read mix/%u-%c\n");
    // Patterns apply to every client, even those after/without a `user` block.
    assert!(a.may_publish(Some("alice"), "c1", "sensor/alice/data"));
    assert!(a.may_publish(Some("bob"), "c1", "sensor/bob/data"));
    assert!(!a.may_publish(Some("bob"), "c1", "sensor/alice/data"));
    assert!(!a.may_receive(Some("bob"), "c1", "sensor/bob/data"));
    assert!(a.may_receive(Some("bob"), "c1", "clients/c1/x/y"));
    assert!(a.may_receive(Some("bob"), "c1", "clients/c1"));
    assert!(!a.may_receive(Some("bob"), "c1", "clients/c2/x"));
    assert!(a.may_receive(Some("bob"), "c1", "mix/bob-c1"));
    // %u patterns do not apply without a username; %c ones do.
    assert!(!a.may_publish(None, "c1", "sensor//data"));
    assert!(!a.may_publish(None, "c1", "sensor/%u/data"));
    assert!(a.may_publish(None, "c1", "clients/c1/z"));
    // A `/` in the username spans levels, as in Mosquitto.
    assert!(a.may_publish(Some("a/b"), "c1", "sensor/a/b/data"));
}

#[test]
fn wildcards_in_identity_are_refused_when_patterns_exist() {
    let a = acl("topic #\nuser u+\ntopic #\npattern clients/%c/#\n");
    assert!(!a.may_publish(None, "c#", "clients/x/y"));
    assert!(!a.may_publish(None, "c#", "other"));
    assert!(!a.may_receive(Some("u+"), "c", "other"));
    assert_eq!(a.may_subscribe(None, "+", "clients/+/y"), Denied);
    assert!(a.may_publish(None, "c", "other"));
    // Without patterns nothing is substituted, so the identity does not matter.
    let a = acl("user u+\ntopic #\n");
    assert!(a.may_publish(Some("u+"), "c#", "x"));
}

#[test]
fn sys_topics_need_an_explicit_grant() {
    let a = acl("topic #\nuser admin\ntopic #\ntopic read $SYS/#\npattern +/%c\n");
    assert!(a.may_receive(None, "c", "a/b"));
    assert!(!a.may_receive(None, "c", "$SYS/broker/uptime"));
    assert!(!a.may_receive(None, "c", "$SYS/c"));
    assert_eq!(a.may_subscribe(None, "c", "$SYS/#"), Denied);
    assert_eq!(a.may_subscribe(None, "c", "#"), Allowed);
    assert!(a.may_receive(Some("admin"), "c", "$SYS/broker/uptime"));
    assert!(!a.may_publish(Some("admin"), "c", "$SYS/broker/uptime"));
    assert_eq!(a.may_subscribe(Some("admin"), "c", "$SYS/#"), Allowed);
    assert_eq!(
        a.may_subscribe(Some("admin"), "c", "$SYS/broker/+"),
        Allowed
    );
}

#[test]
fn shared_prefix_is_stripped_on_subscribe() {
    let a = acl("topic read jobs/#\n");
    assert_eq!(a.may_subscribe(None, "c", "$share/g/jobs/+"), Allowed);
    assert_eq!(a.may_subscribe(None, "c", "$share/g/other"), Denied);
    assert_eq!(a.may_subscribe(None, "c", "$share/g"), Denied);
    assert_eq!(a.may_subscribe(None, "c", "$share//jobs/x"), Denied);
}

#[test]
fn subscribe_classification() {
    let a = acl(concat!(
        "topic read foo/#\n",
        "topic deny foo/secret\n",
        "topic read bar/+\n",
        "topic write w/#\n",
        "topic read d/#\n",
        "topic deny d/#\n",
        "topic read x/a\n",
        "topic read x/b\n",
        "topic read deep/+/+/end\n",
        "topic deny deep/+/no/+\n",
    ));
    let cases = [
        ("foo/#", AllowedCheckEachMessage),
        ("foo/+", AllowedCheckEachMessage),
        ("#", Denied),
        ("+/secret", Denied),
        ("foo", Allowed),
        ("foo/x", Allowed),
        ("foo/+/bar", Allowed),
        ("foo/x/#", Allowed),
        ("foo/secret", Denied),
        ("foo/secret/x", Allowed),
        ("bar/x", Allowed),
        ("bar/+", Allowed),
        ("bar/#", Denied),
        ("bar", Denied),
        ("bar/x/y", Denied),
        ("w/x", Denied),
        ("d/x", Denied),
        ("d/#", Denied),
        ("x/a", Allowed),
        ("x/+", Denied),
        ("deep/+/+/end", AllowedCheckEachMessage),
        ("deep/a/+/end", AllowedCheckEachMessage),
        ("deep/a/yes/end", Allowed),
        ("deep/a/no/end", Denied),
    ];
    for (filter, want) in cases {
        assert_eq!(a.may_subscribe(None, "c", filter), want, "filter {filter}");
    }
    // Delivery filtering complements AllowedCheckEachMessage.
    assert!(!a.may_receive(None, "c", "foo/secret"));
    assert!(a.may_receive(None, "c", "foo/public"));
}

#[test]
fn subscribe_with_patterns() {
    let a = acl("pattern read users/%u/#\npattern deny users/%u/private\npattern read c/%c\n");
    assert_eq!(
        a.may_subscribe(Some("al"), "c1", "users/al/#"),
        AllowedCheckEachMessage
    );
    assert_eq!(a.may_subscribe(Some("al"), "c1", "users/al/inbox"), Allowed);
    assert_eq!(
        a.may_subscribe(Some("al"), "c1", "users/al/private"),
        Denied
    );
    assert_eq!(a.may_subscribe(Some("al"), "c1", "users/bo/inbox"), Denied);
    assert_eq!(a.may_subscribe(Some("al"), "c1", "users/+/inbox"), Denied);
    assert_eq!(a.may_subscribe(None, "c1", "users/al/inbox"), Denied);
    assert_eq!(a.may_subscribe(None, "c1", "c/c1"), Allowed);
    assert_eq!(a.may_subscribe(None, "c1", "c/+"), Denied);
}

#[test]
fn invalid_subscribe_filter_is_denied() {
    let a = acl("topic #\n");
    assert_eq!(a.may_subscribe(None, "c", "a/#/b"), Denied);
    assert_eq!(a.may_subscribe(None, "c", "a+"), Denied);
    assert_eq!(a.may_subscribe(None, "c", ""), Denied);
}

#[test]
fn parse_errors_name_the_line() {
    let err = |text: &str| Acl::parse(text).expect_err("should fail");
    assert!(matches!(
        err("# c\n\ntopic a\nbogus x\n"),
        AclError::UnknownKeyword { line: 4, ref keyword } if keyword == "bogus"
    ));
    assert!(matches!(
        err("topic a\ntopic readonly a/b\n"),
        AclError::BadAccess { line: 2, ref access } if access == "readonly"
    ));
    assert!(matches!(err("topic\n"), AclError::MissingTopic { line: 1 }));
    assert!(matches!(
        err("\npattern   \n"),
        AclError::MissingTopic { line: 2 }
    ));
    assert!(matches!(
        err("user\n"),
        AclError::MissingUsername { line: 1 }
    ));
    assert!(matches!(
        err("topic read a/#/b\n"),
        AclError::InvalidTopic {
            line: 1,
            source: TopicError::MisplacedMultiLevelWildcard,
            ..
        }
    ));
    assert!(matches!(
        err("Topic a\n"),
        AclError::UnknownKeyword { line: 1, .. }
    ));
    let message = err("x\n").to_string();
    assert!(message.contains("line 1"), "{message}");
}

#[test]
fn load_reads_a_file() {
    let path = std::env::temp_dir().join(format!("shardmq-acl-test-{}", std::process::id()));
    std::fs::write(&path, "topic read a\n").unwrap();
    let a = Acl::load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(a.may_receive(None, "c", "a"));
    assert!(matches!(Acl::load(&path), Err(AclError::Io { .. })));
}

/// Small exhaustive universes of filters and topics.
fn filters() -> Vec<String> {
    let levels = ["a", "b", "", "+", "#", "$s"];
    let mut out = Vec::new();
    let mut frontier: Vec<String> = levels.iter().map(|s| s.to_string()).collect();
    for _ in 0..3 {
        let mut next = Vec::new();
        for f in &frontier {
            if validate_topic_filter(f).is_ok() {
                out.push(f.clone());
            }
            if !f.ends_with('#') {
                for l in levels {
                    if l != "$s" {
                        next.push(format!("{f}/{l}"));
                    }
                }
            }
        }
        frontier = next;
    }
    out
}

fn topics() -> Vec<String> {
    filters()
        .into_iter()
        .filter(|f| !f.contains(['+', '#']))
        .chain(["a/b/a/b".into(), "$s/a/b/a".into()])
        .collect()
}

#[test]
fn pieces_match_agrees_with_filter_matches() {
    let topics = topics();
    for f in filters() {
        let pattern = Pattern::compile(&f);
        let who = Who {
            username: None,
            client_id: "",
        };
        for t in &topics {
            assert_eq!(
                pieces_match(pattern.bytes(&who), t),
                filter_matches(&f, t),
                "filter {f:?} topic {t:?}"
            );
        }
    }
    // Substitution inside a level and across pieces.
    let p = Pattern::compile("a/x%cy/%u");
    let who = Who {
        username: Some("u/v"),
        client_id: "1",
    };
    assert!(pieces_match(p.bytes(&who), "a/x1y/u/v"));
    assert!(!pieces_match(p.bytes(&who), "a/x1y/u"));
    assert_eq!(p.substitute(&who), "a/x1y/u/v");
}

#[test]
fn rule_matches_agrees_with_filter_matches() {
    let topics = topics();
    let extra_topics = ["a/", "/", "//", "a//b", "a/b/", "$s/", "ab", "a/bb", "b/a/"];
    for f in filters() {
        for t in topics.iter().map(String::as_str).chain(extra_topics) {
            assert_eq!(
                rule_matches(&f, t),
                filter_matches(&f, t),
                "filter {f:?} topic {t:?}"
            );
        }
    }
}

#[test]
fn covers_and_intersects_agree_with_brute_force() {
    let filters = filters();
    let topics = topics();
    for r in &filters {
        for f in &filters {
            let matched = |x: &str| -> Vec<&String> {
                topics.iter().filter(|t| filter_matches(x, t)).collect()
            };
            let (mr, mf) = (matched(r), matched(f));
            let subset = mf.iter().all(|t| mr.contains(t));
            let overlap = mf.iter().any(|t| mr.contains(t));
            // covers may only err toward "no"; only `+/#` vs `#` is known to do so.
            if covers(r, f) {
                assert!(subset, "covers({r:?}, {f:?}) but not a subset");
            } else if subset && !(r.starts_with("+/") && f.starts_with('#')) {
                // The finite universe can make a non-covering pair look like a subset
                // when the filter ends in `#`; only check pairs without `#` in f.
                assert!(f.contains('#'), "missed covers({r:?}, {f:?})");
            }
            // intersects may only err toward "yes" (more per-message checks).
            if overlap {
                assert!(intersects(r, f), "missed intersects({r:?}, {f:?})");
            }
            assert_eq!(intersects(r, f), intersects(f, r));
        }
    }
}

/// A line of a generated ACL file, for the property test below.
#[derive(Debug, Clone)]
enum Line {
    User(&'static str),
    Topic(&'static str, String),
    Pattern(&'static str, String),
}

fn render(lines: &[Line]) -> String {
    let mut text = String::new();
    for line in lines {
        let (keyword, access, topic) = match line {
            Line::User(name) => {
                text.push_str(&format!("user {name}\n"));
                continue;
            }
            Line::Topic(access, topic) => ("topic", access, topic),
            Line::Pattern(access, topic) => ("pattern", access, topic),
        };
        text.push_str(&format!("{keyword} {access} {topic}\n"));
    }
    text
}

/// The rules evaluated the straightforward way, straight from the lines: every rule that
/// applies to the client, patterns substituted into strings, each matched with
/// [`filter_matches`]; a matching deny wins, else any matching grant of the wanted access.
fn reference_check(
    lines: &[Line],
    username: Option<&str>,
    client_id: &str,
    topic: &str,
    write: bool,
) -> bool {
    let bad = |s: &str| s.contains(['+', '#']);
    let has_patterns = lines.iter().any(|l| matches!(l, Line::Pattern(..)));
    if has_patterns && (username.is_some_and(bad) || bad(client_id)) {
        return false;
    }
    let (mut denied, mut granted) = (false, false);
    let mut current: Option<&str> = None;
    for line in lines {
        let (access, filter) = match line {
            Line::User(name) => {
                current = Some(name);
                continue;
            }
            Line::Topic(access, topic) if current == username => (*access, topic.clone()),
            Line::Topic(..) => continue,
            Line::Pattern(_, topic) if topic.contains("%u") && username.is_none() => continue,
            Line::Pattern(access, topic) => (
                *access,
                topic
                    .replace("%u", username.unwrap_or(""))
                    .replace("%c", client_id),
            ),
        };
        if filter_matches(&filter, topic) {
            match access {
                "deny" => denied = true,
                "read" => granted |= !write,
                "write" => granted |= write,
                _ => granted = true,
            }
        }
    }
    granted && !denied
}

mod indexed_matches_reference {
    use super::*;
    use proptest::prelude::*;

    /// Rule topic levels: literals (one shared with `$` topics), wildcards, substitutions
    /// alone, inside a level and two in one level. No token ends in `%`, so substituting a
    /// `%u` never forms a `%c` with what follows (the reference replaces one after the other).
    const RULE_LEVELS: &[&str] = &["a", "b", "$s", "", "+", "%u", "%c", "x%cy", "%u-%c", "c1"];
    const TOPIC_LEVELS: &[&str] = &["a", "b", "$s", "", "u1", "c1", "x", "y", "xc1y", "u1-c1"];
    const USERS: &[&str] = &["u1", "u2", "x/y", "u+"];
    const ACCESS: &[&str] = &["read", "write", "readwrite", "deny", ""];
    const USERNAMES: [Option<&str>; 6] = [
        None,
        Some("u1"),
        Some("u2"),
        Some("x/y"),
        Some(""),
        Some("u+"),
    ];
    const CLIENT_IDS: [&str; 5] = ["c1", "c2", "", "a", "c#"];

    fn rule_topic() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop::sample::select(RULE_LEVELS), 1..4),
            any::<bool>(),
        )
            .prop_map(|(mut levels, hash)| {
                if hash {
                    levels.push("#");
                }
                let topic = levels.join("/");
                // `topic <access>` with an empty topic is not a rule.
                if topic.is_empty() {
                    "a".to_owned()
                } else {
                    topic
                }
            })
    }

    fn line() -> impl Strategy<Value = Line> {
        prop_oneof![
            1 => prop::sample::select(USERS).prop_map(Line::User),
            3 => (prop::sample::select(ACCESS), rule_topic()).prop_map(|(a, t)| Line::Topic(a, t)),
            2 => (prop::sample::select(ACCESS), rule_topic()).prop_map(|(a, t)| Line::Pattern(a, t)),
        ]
    }

    fn topic_name() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(TOPIC_LEVELS), 1..5).prop_map(|levels| {
            let topic = levels.join("/");
            if topic.is_empty() {
                "a".to_owned()
            } else {
                topic
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn publish_and_receive_agree_with_the_reference(
            lines in prop::collection::vec(line(), 0..40),
            topics in prop::collection::vec(topic_name(), 1..12),
        ) {
            let text = render(&lines);
            let acl = Acl::parse(&text).expect("generated ACLs are valid");
            for username in USERNAMES {
                for client_id in CLIENT_IDS {
                    // With and without the client's precomputed part (what a connection keeps).
                    let prepared = acl.client_acl(username, client_id);
                    for topic in &topics {
                        let publish = reference_check(&lines, username, client_id, topic, true);
                        let receive = reference_check(&lines, username, client_id, topic, false);
                        prop_assert_eq!(
                            acl.may_publish(username, client_id, topic), publish,
                            "publish {:?} {:?} {:?}\n{}", username, client_id, topic, text
                        );
                        prop_assert_eq!(
                            acl.may_receive(username, client_id, topic), receive,
                            "receive {:?} {:?} {:?}\n{}", username, client_id, topic, text
                        );
                        prop_assert_eq!(
                            acl.may_publish_with(&prepared, username, client_id, topic), publish,
                            "prepared publish {:?} {:?} {:?}\n{}", username, client_id, topic, text
                        );
                        prop_assert_eq!(
                            acl.may_receive_with(&prepared, username, client_id, topic), receive,
                            "prepared receive {:?} {:?} {:?}\n{}", username, client_id, topic, text
                        );
                    }
                }
            }
        }

        /// A reload: clients prepared with the old ACL are checked against the new one with
        /// the new one's verdicts (a prepared part of another ACL is never used), and the
        /// prepared part of the new ACL agrees too. Also for the same text parsed again.
        #[test]
        fn prepared_clients_follow_a_reload(
            old in prop::collection::vec(line(), 0..30),
            new in prop::collection::vec(line(), 0..30),
            same_text in any::<bool>(),
            topics in prop::collection::vec(topic_name(), 1..8),
        ) {
            let new = if same_text { old.clone() } else { new };
            let (old_text, new_text) = (render(&old), render(&new));
            let old_acl = Acl::parse(&old_text).expect("generated ACLs are valid");
            let new_acl = Acl::parse(&new_text).expect("generated ACLs are valid");
            prop_assert_ne!(old_acl.generation(), new_acl.generation());
            prop_assert_eq!(old_acl.clone().generation(), old_acl.generation());
            for username in USERNAMES {
                for client_id in CLIENT_IDS {
                    let stale = old_acl.client_acl(username, client_id);
                    let fresh = new_acl.client_acl(username, client_id);
                    for topic in &topics {
                        let publish = reference_check(&new, username, client_id, topic, true);
                        let receive = reference_check(&new, username, client_id, topic, false);
                        for prepared in [&stale, &fresh] {
                            prop_assert_eq!(
                                new_acl.may_publish_with(prepared, username, client_id, topic),
                                publish,
                                "publish {:?} {:?} {:?}\nold:\n{}new:\n{}",
                                username, client_id, topic, old_text, new_text
                            );
                            prop_assert_eq!(
                                new_acl.may_receive_with(prepared, username, client_id, topic),
                                receive,
                                "receive {:?} {:?} {:?}\nold:\n{}new:\n{}",
                                username, client_id, topic, old_text, new_text
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn client_acl_is_per_client_and_per_acl() {
    let a = acl("topic read pub/#\nuser u\ntopic u/#\npattern c/%c\n");
    // Anonymous, a user with rules, a user without, a dangerous identity.
    let anonymous = a.client_acl(None, "c1");
    let user = a.client_acl(Some("u"), "c1");
    let stranger = a.client_acl(Some("v"), "c1");
    let dangerous = a.client_acl(Some("u"), "c#");
    assert!(a.may_receive_with(&anonymous, None, "c1", "pub/x"));
    assert!(!a.may_receive_with(&user, Some("u"), "c1", "pub/x"));
    assert!(a.may_publish_with(&user, Some("u"), "c1", "u/x"));
    assert!(!a.may_publish_with(&stranger, Some("v"), "c1", "u/x"));
    assert!(a.may_publish_with(&stranger, Some("v"), "c1", "c/c1"));
    assert!(!a.may_publish_with(&dangerous, Some("u"), "c#", "u/x"));
    // The default (empty) ACL denies with or without a prepared part, even a foreign one.
    let empty = Acl::default();
    assert!(!empty.may_publish_with(&user, Some("u"), "c1", "u/x"));
    assert!(!empty.may_publish_with(&empty.client_acl(None, "c"), None, "c", "x"));
    // Another parse of the same text is another ACL: the prepared part is not reused (the
    // verdicts are the same either way).
    let again = acl("topic read pub/#\nuser u\ntopic u/#\npattern c/%c\n");
    assert_ne!(again.client_acl(Some("u"), "c1"), user);
    assert!(again.may_publish_with(&user, Some("u"), "c1", "u/x"));
    // A reload that swaps the users' rules: a prepared part of the old ACL would point at the
    // wrong user's rules if it were used.
    let swapped = acl("user v\ntopic v/#\nuser u\ntopic only/#\n");
    // Kept with every session: small.
    assert!(std::mem::size_of::<Option<ClientAcl>>() <= 8);
    for rules in [
        ClientRules::DenyAll,
        ClientRules::Anonymous,
        ClientRules::PatternsOnly,
        ClientRules::User(0),
        ClientRules::User(7),
        ClientRules::User(MAX_USERS - 1),
    ] {
        assert_eq!(ClientRules::unpack(rules.pack()), rules);
    }
    assert!(!swapped.may_publish_with(&user, Some("u"), "c1", "u/x"));
    assert!(swapped.may_publish_with(&user, Some("u"), "c1", "only/x"));
}

#[test]
fn index_buckets() {
    // Literal first levels, wildcards, substitutions in the first level and later ones.
    let lit = |p: &str| Pattern::compile(p).literal_first_level().map(str::to_owned);
    assert_eq!(lit("p/%c/#").as_deref(), Some("p"));
    assert_eq!(lit("%u/private"), None);
    assert_eq!(lit("x%c/in"), None);
    assert_eq!(lit("/%c").as_deref(), Some(""));
    assert_eq!(lit("plain").as_deref(), Some("plain"));
    assert_eq!(lit("+/%c").as_deref(), Some("+"));
    let a = acl(concat!(
        "topic deny a/secret\n",
        "topic a/#\n",
        "topic +/shared\n",
        "topic read #\n",
        "user u\n",
        "topic #\n",
        "user a/b\n",
        "topic a/#\n",
        "pattern write p/%c/#\n",
        "pattern deny %u/private\n",
        "pattern x%c/in\n",
        "pattern /%c\n",
    ));
    assert!(a.may_publish(None, "c", "a/x"));
    assert!(!a.may_publish(None, "c", "a/secret"));
    assert!(a.may_publish(None, "c", "z/shared"));
    assert!(a.may_receive(None, "c", "z/other"));
    assert!(!a.may_publish(None, "c", "z/other"));
    assert!(a.may_publish(None, "c", "p/c/1"));
    assert!(!a.may_publish(None, "d", "p/c/1"));
    assert!(a.may_publish(None, "c", "xc/in"));
    assert!(!a.may_publish(None, "c", "xd/in"));
    assert!(a.may_publish(None, "c", "/c"));
    // The %u deny (first level substituted: wildcard bucket) beats the user's `#`, for the
    // user's own name only; a `/` in the username spans levels.
    assert!(!a.may_receive(Some("u"), "c", "u/private"));
    assert!(a.may_receive(Some("u"), "c", "v/private"));
    assert!(a.may_receive(Some("a/b"), "c", "a/b/public"));
    assert!(!a.may_receive(Some("a/b"), "c", "a/b/private"));
}
