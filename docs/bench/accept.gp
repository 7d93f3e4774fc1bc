set terminal pngcairo size 900,480 font 'DejaVu Sans,11'
set style fill solid 0.85 border -1
set grid ytics
set key top right
set output 'accept.png'
set title 'New sessions per second (connect, echo 4 bytes, close)'
set ylabel 'sessions/s'
set style data histograms
set yrange [0:*]
set boxwidth 0.7
plot 'accept.dat' using 2:xtic(1) notitle
