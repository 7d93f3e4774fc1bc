set terminal pngcairo size 900,480 font 'DejaVu Sans,11'
set style fill solid 0.85 border -1
set grid ytics
set key top right
set output 'latency_cdf_one-cpu.png'
set title 'Round trip of a 100-byte line (request/echo), CDF, one-cpu'
set xlabel 'round trip, µs (log scale)'
set ylabel 'fraction of round trips'
set logscale x
set key bottom right
set yrange [0:1]
plot 'latency-one-cpu-direct.cdf' using 1:2 with lines lw 2 title 'direct', 'latency-one-cpu-handover-raw.cdf' using 1:2 with lines lw 2 title 'handover (raw)', 'latency-one-cpu-handover-irc.cdf' using 1:2 with lines lw 2 title 'handover (irc)', 'latency-one-cpu-haproxy.cdf' using 1:2 with lines lw 2 title 'haproxy', 'latency-one-cpu-nginx.cdf' using 1:2 with lines lw 2 title 'nginx', 'latency-one-cpu-socat.cdf' using 1:2 with lines lw 2 title 'socat', 'latency-one-cpu-baseline-handover-raw.cdf' using 1:2 with lines lw 2 title 'baseline handover (raw)'
