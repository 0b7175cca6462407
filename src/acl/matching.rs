//! Matching a substituted `pattern` against a topic name without building the string, and the
//! filter-versus-filter relations [`Acl::may_subscribe`](super::Acl::may_subscribe) needs.

#[cfg(doc)]
use core_router::topic::filter_matches;

/// [`filter_matches`] for a filter given as bytes (a substituted pattern). The filter's `+` and
/// `#` must occupy whole levels, which holds because the template was validated and substituted
/// values never contain `+` or `#` (see `Acl::dangerous`).
pub(super) fn pieces_match(filter: impl Iterator<Item = u8>, topic: &str) -> bool {
    let mut f = filter.peekable();
    let t = topic.as_bytes();
    if t.first() == Some(&b'$') && matches!(f.peek(), Some(b'+' | b'#')) {
        return false;
    }
    // Start of the current topic level; `None` once the topic has no more levels.
    let mut level = Some(0usize);
    loop {
        match f.peek() {
            Some(b'#') => return true,
            Some(b'+') => {
                f.next();
                let Some(start) = level else { return false };
                level = t[start..]
                    .iter()
                    .position(|&b| b == b'/')
                    .map(|at| start + at + 1);
            }
            _ => {
                let Some(mut j) = level else { return false };
                while let Some(&c) = f.peek() {
                    if c == b'/' {
                        break;
                    }
                    if t.get(j) != Some(&c) {
                        return false;
                    }
                    j += 1;
                    f.next();
                }
                level = match t.get(j) {
                    None => None,
                    Some(b'/') => Some(j + 1),
                    Some(_) => return false,
                };
            }
        }
        match f.next() {
            Some(b'/') => {}
            None => return level.is_none(),
            Some(_) => return false,
        }
    }
}

/// [`filter_matches`] for a valid filter, walking the bytes of both once (no `split`
/// iterators: on the publish path this is most of what a rule check costs).
pub(super) fn rule_matches(filter: &str, topic: &str) -> bool {
    let (f, t) = (filter.as_bytes(), topic.as_bytes());
    if t.first() == Some(&b'$') && matches!(f.first(), Some(b'+' | b'#')) {
        return false;
    }
    // `i`: start of the current filter level; `j`: start of the current topic level, or
    // `None` once the topic has no more levels.
    let mut i = 0usize;
    let mut level = Some(0usize);
    loop {
        match f.get(i) {
            // A valid filter has `#` only as its whole last level; it also matches the parent.
            Some(b'#') => return true,
            Some(b'+') => {
                let Some(mut j) = level else { return false };
                while j < t.len() && t[j] != b'/' {
                    j += 1;
                }
                i += 1;
                level = Some(j);
            }
            _ => {
                let Some(mut j) = level else { return false };
                while let Some(&c) = f.get(i) {
                    if c == b'/' {
                        break;
                    }
                    if t.get(j) != Some(&c) {
                        return false;
                    }
                    i += 1;
                    j += 1;
                }
                if j < t.len() && t[j] != b'/' {
                    return false;
                }
                level = Some(j);
            }
        }
        // `f[i]` is `/` or the end; the topic level ended at `j` (`/` or the end).
        let Some(j) = level else { return false };
        match (i < f.len(), j < t.len()) {
            (false, false) => return true,
            (false, true) => return false,
            (true, true) => level = Some(j + 1),
            (true, false) => level = None,
        }
        i += 1;
    }
}

/// Does every topic name that `filter` matches also match `rule`? Both are valid filters.
/// Exact except that `+/#` is not recognised as covering `#`, which only errs toward denying.
pub(super) fn covers(rule: &str, filter: &str) -> bool {
    if filter.starts_with('$') && rule.starts_with(['+', '#']) {
        return false;
    }
    let mut r = rule.split('/');
    let mut f = filter.split('/');
    loop {
        match (r.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(fl)) if fl != "#" => {}
            (Some(rl), Some(fl)) if rl == fl && fl != "#" && fl != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Is there a topic name that both filters match?
pub(super) fn intersects(a: &str, b: &str) -> bool {
    let wild_first = |s: &str| s.starts_with(['+', '#']);
    // A `$` topic is matched only by filters whose first level is literal and starts with `$`.
    if (a.starts_with('$') && wild_first(b)) || (b.starts_with('$') && wild_first(a)) {
        return false;
    }
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(l), Some(m)) if l == m => {}
            _ => return false,
        }
    }
}
