//! Maps a validation [`Problem`]'s path to a line and column in the source,
//! using toml_edit's spans. Validation itself works on the typed config and
//! knows nothing about positions.

use toml_edit::{ImDocument, Item};

use super::{LocatedProblem, PathSeg, Problem};

/// 1-based line and column of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, col)
}

pub fn locate_all(text: &str, problems: Vec<Problem>) -> Vec<LocatedProblem> {
    let doc = ImDocument::parse(text).ok();
    problems
        .into_iter()
        .map(|problem| {
            let location =
                doc.as_ref().and_then(|d| span_of(d.as_item(), &problem.path)).map(|start| line_col(text, start));
            LocatedProblem { problem, location }
        })
        .collect()
}

/// The start offset of the deepest item of `path` that exists: a problem
/// about a missing field points at the table that lacks it.
fn span_of(root: &Item, path: &[PathSeg]) -> Option<usize> {
    let mut item = root;
    let mut best = None;
    for seg in path {
        let next = match seg {
            PathSeg::Key(k) => {
                // Prefer the key's own position: it is where a reader looks.
                if let Some(t) = item.as_table_like()
                    && let Some((key, _)) = t.get_key_value(k)
                {
                    best = key.span().map(|s| s.start).or(best);
                }
                item.get(k.as_str())
            }
            PathSeg::Index(i) => item.get(*i),
        };
        match next {
            Some(n) => {
                item = n;
                if let Some(s) = n.span() {
                    // For values, the key position (set above) reads better
                    // for scalars; tables and array elements have their own.
                    if matches!(seg, PathSeg::Index(_)) || best.is_none() || n.is_table_like() {
                        best = Some(s.start);
                    }
                }
            }
            None => break,
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cfg_path;

    #[test]
    fn line_col_counts_from_one() {
        let t = "a = 1\nbb = 2\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 6), (2, 1));
        assert_eq!(line_col(t, 8), (2, 3));
    }

    #[test]
    fn locates_array_of_tables_fields() {
        let t = "[[segment]]\nname = \"a\"\n\n[[segment]]\nname = \"b\"\ngateway = \"10.0.0.1\"\n";
        let located = locate_all(t, vec![Problem::new(cfg_path!("segment", 1, "gateway"), "x")]);
        assert_eq!(located[0].location, Some((6, 1)));
        let located = locate_all(t, vec![Problem::new(cfg_path!("segment", 1, "missing"), "x")]);
        assert_eq!(located[0].location.map(|l| l.0), Some(4), "points at the table");
    }
}
