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
