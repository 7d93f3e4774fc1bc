set terminal pngcairo size 900,480 font 'DejaVu Sans,11'
set style fill solid 0.85 border -1
set grid ytics
set key top right
set output 'memory.png'
set title 'Memory per idle session (marginal RSS of the process tree)'
set ylabel 'KiB per session'
set style data histograms
set style histogram clustered gap 1
set yrange [0:*]
set key top left
plot 'memory.dat' using 2:xtic(1) title 'handover', '' using 3 title 'haproxy', '' using 4 title 'nginx'
