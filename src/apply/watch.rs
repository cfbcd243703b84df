//! `fleet serve --watch`: the reconcile loop (filled in below).
