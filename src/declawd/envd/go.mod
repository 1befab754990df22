module declawd/envd

go 1.19
