from fastnn.demo import main

main()
