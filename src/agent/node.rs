//! `tend agent`: the node agent lifecycle.
