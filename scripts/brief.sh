# Sourced by the example scripts (run-examples.sh, ddp-demo.sh): what they echo to the terminal
# is a short view of the runs' logs; every check reads the full logs, which stay in the work
# directory.
# merge_epochs: a filter that writes consecutive "epoch N <metric> <value>" lines (N, N+1, ...)
# as one "epochs N-M <metric> <value> <value> ..." line; any other line goes through unchanged.
merge_epochs() {
  awk 'function flush() { if (k == 1) print "epoch " e0 " " m " " v; else if (k) print "epochs " e0 "-" e " " m " " v; k = 0 }
       /^epoch [0-9]+ [a-z_]+ [^ ]+$/ {
         if (k && $3 == m && $2 == e + 1) { e = $2; v = v " " $4; k++; next }
         flush(); e0 = e = $2; m = $3; v = $4; k = 1; next }
       { flush(); print }
       END { flush() }'
}
