//! The folded stacks drawn as an SVG flame graph (inferno), the mapping frames
//! on top coloured by mapping kind so that what the faults hit reads at a glance.
use anyhow::{Context, Result};
use inferno::flamegraph::{
    self,
    color::{BasicPalette, Color, PaletteMap},
    Options, Palette,
};

/// Mapping kinds as the mapping frame's first word, each with its fill; the
/// other frames keep a neutral palette.
const KINDS: &[(&str, Color)] = &[
    ("anon", rgb(230, 85, 13)),
    ("shmem", rgb(117, 107, 177)),
    ("file", rgb(49, 130, 189)),
    ("driver", rgb(214, 39, 40)),
    ("special", rgb(140, 86, 75)),
    ("hugetlb", rgb(44, 160, 44)),
    ("unknown", rgb(127, 127, 127)),
];

const fn rgb(r: u8, g: u8, b: u8) -> Color {
    Color { r, g, b }
}

/// The mapping frame of a folded line: its leaf, `[kind ...]`.
fn mapping_frame(line: &str) -> Option<&str> {
    let (stack, _count) = line.rsplit_once(' ')?;
    let leaf = stack.rsplit(';').next()?;
    (leaf.starts_with('[') && leaf.ends_with(']')).then_some(leaf)
}

fn kind_colour(frame: &str) -> Color {
    let kind = frame[1..frame.len() - 1].split(' ').next().unwrap_or("");
    KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or(rgb(127, 127, 127), |&(_, c)| c)
}

fn counted(line: &str) -> bool {
    line.rsplit_once(' ')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// The SVG for `lines` (as [`super::folded::line`] makes them).
pub fn svg(lines: &[String], title: &str) -> Result<Vec<u8>> {
    // inferno refuses a graph with nothing in it (and logs an error).
    if !lines.iter().any(|l| counted(l)) {
        return Ok(empty_svg(title).into_bytes());
    }
    let mut colours = PaletteMap::default();
    for frame in lines.iter().filter_map(|l| mapping_frame(l)) {
        colours.insert(frame, kind_colour(frame));
    }
    let mut options = Options::default();
    options.title = title.to_string();
    options.count_name = "faults".to_string();
    options.colors = Palette::Basic(BasicPalette::Aqua);
    // Colours from the names, not from a random draw: one trace, one file.
    options.deterministic = true;
    options.palette_map = Some(&mut colours);
    let mut out = Vec::new();
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut out)
        .context("drawing the flame graph")?;
    Ok(out)
}

fn empty_svg(title: &str) -> String {
    format!(
        "<?xml version=\"1.0\" standalone=\"no\"?>\n\
         <svg version=\"1.1\" width=\"1200\" height=\"80\" viewBox=\"0 0 1200 80\" \
         xmlns=\"http://www.w3.org/2000/svg\">\n\
         <rect x=\"0\" y=\"0\" width=\"100%\" height=\"100%\" fill=\"#eeeeee\"/>\n\
         <text x=\"600\" y=\"30\" text-anchor=\"middle\" font-family=\"Verdana\" \
         font-size=\"17\">{}</text>\n\
         <text x=\"600\" y=\"60\" text-anchor=\"middle\" font-family=\"Verdana\" \
         font-size=\"12\">no call sites recorded</text>\n\
         </svg>\n",
        xml_escape(title)
    )
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Not allowed in XML 1.0 at all, even escaped.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::folded::{line, CallSite};

    fn lines() -> Vec<String> {
        let main = ["main".to_string(), "fill_buffer".to_string()];
        let hostile = [
            "main".to_string(),
            "</title><script>alert(1)</script>".to_string(),
        ];
        let mut lines: Vec<String> = [
            CallSite {
                comm: "app",
                frames: &main,
                mapping: "anon do_anonymous_page",
                count: 30,
            },
            CallSite {
                comm: "app",
                frames: &hostile,
                mapping: "shmem shmem_fault do_shared_fault",
                count: 10,
            },
        ]
        .iter()
        .map(line)
        .collect();
        lines.sort();
        lines
    }

    fn written(lines: &[String], title: &str) -> String {
        let dir = crate::files::private_dir("rmaptrace-test").unwrap();
        let path = dir.join("faults.svg");
        crate::export::folded::PendingFile::create(&path, "the flame graph", "--flamegraph")
            .unwrap()
            .finish(&svg(lines, title).unwrap())
            .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(svg.starts_with("<?xml") || svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        svg
    }

    #[test]
    fn draws_the_stacks_with_mapping_frames_coloured_by_kind() {
        let svg = written(&lines(), "page faults of app");
        assert!(svg.contains("page faults of app"));
        assert!(svg.contains("fill_buffer"));
        assert!(svg.contains("[anon do_anonymous_page]"));
        assert!(svg.contains("faults"));
        assert!(svg.contains("fill=\"rgb(230,85,13)\""), "anon's colour");
        assert!(svg.contains("fill=\"rgb(117,107,177)\""), "shmem's colour");
        assert!(
            !svg.contains("<script>alert"),
            "a function name is text, never markup"
        );
    }

    #[test]
    fn the_same_stacks_give_the_same_file() {
        assert_eq!(svg(&lines(), "t").unwrap(), svg(&lines(), "t").unwrap());
    }

    #[test]
    fn no_stacks_still_give_a_valid_svg() {
        let svg = written(&[], "faults of <none> & \x1b");
        assert!(svg.contains("no call sites recorded"));
        assert!(svg.contains("faults of &lt;none&gt; &amp; ?"));
        assert!(super::svg(&["app;[anon x] 0".to_string()], "t").is_ok());
    }

    #[test]
    fn kinds_have_distinct_colours() {
        for (i, (_, a)) in KINDS.iter().enumerate() {
            assert!(KINDS[i + 1..].iter().all(|(_, b)| a != b));
        }
        assert_eq!(kind_colour("[file filemap_fault /x]"), rgb(49, 130, 189));
        assert_eq!(kind_colour("[weird]"), rgb(127, 127, 127));
        assert_eq!(mapping_frame("a;b;[hugetlb h] 3"), Some("[hugetlb h]"));
        assert_eq!(mapping_frame("a;b 3"), None);
    }
}
