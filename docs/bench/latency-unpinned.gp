set terminal pngcairo size 900,480 font 'DejaVu Sans,11'
set style fill solid 0.85 border -1
set grid ytics
set key top right
set output 'latency_cdf_unpinned.png'
set title 'Round trip of a 100-byte line (request/echo), CDF, unpinned'
set xlabel 'round trip, µs (log scale)'
set ylabel 'fraction of round trips'
set logscale x
set key bottom right
set yrange [0:1]
plot 'latency-unpinned-direct.cdf' using 1:2 with lines lw 2 title 'direct', 'latency-unpinned-handover-raw.cdf' using 1:2 with lines lw 2 title 'handover (raw)', 'latency-unpinned-handover-irc.cdf' using 1:2 with lines lw 2 title 'handover (irc)', 'latency-unpinned-haproxy.cdf' using 1:2 with lines lw 2 title 'haproxy', 'latency-unpinned-nginx.cdf' using 1:2 with lines lw 2 title 'nginx', 'latency-unpinned-socat.cdf' using 1:2 with lines lw 2 title 'socat', 'latency-unpinned-baseline-handover-raw.cdf' using 1:2 with lines lw 2 title 'baseline handover (raw)'
