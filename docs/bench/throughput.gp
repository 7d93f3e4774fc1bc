set terminal pngcairo size 900,480 font 'DejaVu Sans,11'
set style fill solid 0.85 border -1
set grid ytics
set key top right
set output 'throughput.png'
set title 'iperf3 throughput through each proxy (loopback, 2 cores)'
set ylabel 'Gbit/s'
set style data histograms
set style histogram clustered gap 1
set yrange [0:*]
plot 'throughput.dat' using 2:xtic(1) title '1 stream', '' using 3 title '8 streams'
