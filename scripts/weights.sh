# Sourced by the train_ddp scripts (ddp-demo.sh, netns-nodes.sh).
# max_weight_diff A B: the largest absolute difference between the "rank 0: weights ..." lines
# of two train_ddp logs ("size" when they hold different numbers of weights).
max_weight_diff() {
  paste -d'\n' <(grep -h '^rank 0: weights' "$1") <(grep -h '^rank 0: weights' "$2") |
    awk 'NR==1 { for (i = 4; i <= NF; i++) a[i] = $i; n = NF; next }
         { if (NF != n) { print "size"; exit } m = 0
           for (i = 4; i <= NF; i++) { d = a[i] - $i; if (d < 0) d = -d; if (d > m) m = d } printf "%.3g\n", m }'
}
# weight_count A: how many weights the "rank 0: weights ..." line of a train_ddp log holds.
weight_count() { grep -h '^rank 0: weights' "$1" | awk '{ print NF - 3; exit }'; }
# The tolerance of a comparison between runs at different numbers of ranks (the float rounding
# of a gradient summed in another order, over a few dozen Adam steps, stays far below it).
weights_tolerance=1e-4
# within_tolerance D: true when D (a max_weight_diff) is a number below $weights_tolerance.
within_tolerance() {
  [ -n "$1" ] && [ "$1" != size ] && awk -v w="$1" -v t="$weights_tolerance" 'BEGIN { exit !(w < t) }'
}
