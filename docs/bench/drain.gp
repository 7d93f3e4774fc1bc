set terminal pngcairo size 900,480 font 'DejaVu Sans,11'
set style fill solid 0.85 border -1
set grid ytics
set key top right
set termoption noenhanced
set output 'drain.png'
set title 'Drain ngircd a -> b: migrations per bucket of handover_migration_duration_seconds and handover_client_pause_seconds'
set title font ',10'
set xlabel 'bucket, ms'
set ylabel 'sessions'
set style data histograms
set style histogram clustered gap 1
set yrange [0:*]
set xtics rotate by -35
plot 'drain.dat' using 2:xtic(1) title 'migration, 1000 sessions', '' using 3 title 'client pause, 1000 sessions', '' using 4 title 'migration, 5000 sessions', '' using 5 title 'client pause, 5000 sessions'
