//! The kernel path tree: every fault's chain of mm/ functions, from the exception
//! entry down to the mapping's `vm_ops->fault`, merged over mappings with live
//! counts. It shows where anonymous and driver faults part ways: anonymous memory
//! stops at do_anonymous_page, everything with a `->fault` goes on through
//! do_fault → __do_fault into the handler.
use super::history::History;
use crate::model::summary::VmaSummary;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Node {
    pub name: String,
    pub count: u64,
    pub rate: f64,
    pub children: Vec<Node>,
}

/// The chain of functions below exc_page_fault for one path of one mapping.
pub fn chain(path: &str, vma: &VmaSummary) -> Vec<String> {
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match path {
        "unknown" => s(&["(path unknown)"]),
        "hugetlb_fault" | "do_huge_pmd_anonymous_page" => s(&["handle_mm_fault", path]),
        "handle_pte_fault" => s(&["handle_mm_fault", "handle_pte_fault"]),
        "do_read_fault" | "do_cow_fault" | "do_shared_fault" => {
            let mut v = s(&[
                "handle_mm_fault",
                "handle_pte_fault",
                "do_fault",
                path,
                "__do_fault",
            ]);
            v.push(handler_label(vma).unwrap_or_else(|| "(no vm_ops->fault)".into()));
            v
        }
        other => s(&["handle_mm_fault", "handle_pte_fault", other]),
    }
}

/// `kvm_vcpu_fault [kvm]`: the handler with the module it lives in.
pub fn handler_label(vma: &VmaSummary) -> Option<String> {
    let h = vma.handler.as_ref()?;
    Some(match &vma.module {
        Some(m) => format!("{h} [{m}]"),
        None => h.clone(),
    })
}

fn add(node: &mut Node, chain: &[String], count: u64, rate: f64) {
    node.count += count;
    node.rate += rate;
    if let Some((first, rest)) = chain.split_first() {
        let i = match node.children.iter().position(|c| &c.name == first) {
            Some(i) => i,
            None => {
                node.children.push(Node {
                    name: first.clone(),
                    ..Node::default()
                });
                node.children.len() - 1
            }
        };
        add(&mut node.children[i], rest, count, rate);
    }
}

fn sort(node: &mut Node) {
    node.children
        .sort_by(|a, b| b.count.cmp(&a.count).then(a.name.cmp(&b.name)));
    node.children.iter_mut().for_each(sort);
}

/// The tree over `vmas` (pid, mapping), rates from `history`.
pub fn build<'a>(vmas: impl IntoIterator<Item = (u32, &'a VmaSummary)>, h: &History) -> Node {
    let mut root = Node {
        name: "exc_page_fault".into(),
        ..Node::default()
    };
    for (pid, v) in vmas {
        for (&path, &n) in &v.paths {
            let rate = h.path_rate.get(&(pid, v.key, path)).copied().unwrap_or(0.0);
            add(&mut root, &chain(path, v), n, rate);
        }
    }
    sort(&mut root);
    root
}

/// Depth-first lines: (prefix drawn with box characters, node).
pub fn lines(root: &Node) -> Vec<(String, &Node)> {
    fn walk<'a>(
        n: &'a Node,
        prefix: &str,
        last: bool,
        top: bool,
        out: &mut Vec<(String, &'a Node)>,
    ) {
        let (here, below) = if top {
            (String::new(), String::new())
        } else if last {
            (format!("{prefix}└─ "), format!("{prefix}   "))
        } else {
            (format!("{prefix}├─ "), format!("{prefix}│  "))
        };
        out.push((here, n));
        for (i, c) in n.children.iter().enumerate() {
            walk(c, &below, i + 1 == n.children.len(), false, out);
        }
    }
    let mut out = Vec::new();
    walk(root, "", true, true, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::fake;

    #[test]
    fn anonymous_and_driver_faults_part_at_handle_pte_fault() {
        let s = fake::summary();
        let vmas = s
            .processes
            .iter()
            .flat_map(|p| p.vmas.iter().map(move |v| (p.pid, v)));
        let root = build(vmas, &History::default());
        assert_eq!(root.count, 1155);
        let text: Vec<String> = lines(&root)
            .iter()
            .map(|(p, n)| format!("{p}{} {}", n.name, n.count))
            .collect();
        let want = [
            "exc_page_fault 1155",
            "└─ handle_mm_fault 1155",
            "   └─ handle_pte_fault 1155",
            "      ├─ do_anonymous_page 800",
            "      ├─ do_wp_page 200",
            "      └─ do_fault 155",
            "         ├─ do_shared_fault 100",
            "         │  └─ __do_fault 100",
            "         │     └─ shmem_fault 100",
            "         ├─ do_read_fault 53",
            "         │  └─ __do_fault 53",
            "         │     ├─ filemap_fault 50",
            "         │     └─ kvm_vcpu_fault [kvm] 3",
            "         └─ do_cow_fault 2",
            "            └─ __do_fault 2",
            "               └─ filemap_fault 2",
        ];
        assert_eq!(text, want);
    }
}
