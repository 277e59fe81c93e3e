//! Dependency-graph helpers shared by batch validation and `doctor`
//! (`spec/PROTOCOL.md` section 5.1: dependencies form a DAG).

/// Finds one cycle in the directed graph with nodes `0..n` and edges
/// `edges(i)` (the nodes `i` depends on). Returns the cycle as a path that
/// starts and ends at the same node, or `None` for a DAG.
///
/// Iterative depth-first search with an explicit stack, so that a
/// 100,000-long dependency chain cannot overflow the thread's stack.
pub fn find_cycle(n: usize, edges: impl Fn(usize) -> Vec<usize>) -> Option<Vec<usize>> {
    // 0 = unseen, 1 = on the current path, 2 = finished.
    let mut state = vec![0u8; n];
    for root in 0..n {
        if state[root] != 0 {
            continue;
        }
        // Each frame: a node and the edges still to follow.
        let mut stack: Vec<(usize, Vec<usize>)> = vec![(root, edges(root))];
        state[root] = 1;
        while let Some((node, rest)) = stack.last_mut() {
            let node = *node;
            match rest.pop() {
                Some(next) if next < n => match state[next] {
                    0 => {
                        state[next] = 1;
                        let e = edges(next);
                        stack.push((next, e));
                    }
                    1 => {
                        let at = stack.iter().position(|(x, _)| *x == next).unwrap_or(0);
                        let mut cycle: Vec<usize> = stack[at..].iter().map(|(x, _)| *x).collect();
                        cycle.push(next);
                        return Some(cycle);
                    }
                    _ => {}
                },
                Some(_) => {}
                None => {
                    state[node] = 2;
                    stack.pop();
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cycles_and_accepts_dags() {
        let g = [vec![1], vec![2], vec![0]];
        let c = find_cycle(3, |i| g[i].clone()).expect("cycle");
        assert_eq!(c.first(), c.last());
        assert_eq!(c.len(), 4);
        let dag = [vec![1, 2], vec![2], vec![]];
        assert!(find_cycle(3, |i| dag[i].clone()).is_none());
        assert!(find_cycle(1, |_| vec![0]).is_some(), "self-loop");
    }

    #[test]
    fn a_very_long_chain_does_not_overflow_the_stack() {
        let n = 200_000;
        assert!(find_cycle(n, |i| if i + 1 < n { vec![i + 1] } else { vec![] }).is_none());
        assert!(find_cycle(n, |i| vec![(i + 1) % n]).is_some());
    }
}
